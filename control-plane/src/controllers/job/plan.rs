//! The Job controller's pure decision: how many pods to create or delete,
//! whether the Job has finished, and how long a failure holds creation back.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// `0-2,4` from {0,1,2,4}, as Kubernetes writes completedIndexes.
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().peekable();
    while let Some(&start) = it.next() {
        let mut end = start;
        while it.peek().is_some_and(|&&n| n == end + 1) {
            end = *it.next().expect("peeked");
        }
        out.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b.min(a + 100_000));
                }
            }
            None => out.extend(part.parse::<i64>().ok()),
        }
    }
    out
}

/// Back-off before the next pod after `failures` failures: 10 s, doubling, at most 6 min.
pub fn backoff(failures: i64) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let shift = (failures - 1).min(16) as u32;
    (BACKOFF_BASE * 2u32.pow(shift)).min(BACKOFF_MAX)
}

/// What a sync decided, computed from the Job and its pods alone.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create; for Indexed Jobs, their indexes.
    pub create: Vec<Option<i64>>,
    /// Active pods to delete (by name).
    pub delete: Vec<String>,
    /// The condition to add, with its reason and message.
    pub finish: Option<(&'static str, &'static str, String)>,
    /// Wait before creating (back-off), if creation is held back.
    pub wait: Option<Duration>,
}

/// The counts a sync works from.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub succeeded: i64,
    pub failed: i64,
    pub completed: BTreeSet<i64>,
    /// Seconds since the last failure, if any pod failed.
    pub since_failure: Option<i64>,
    /// Seconds since the job started.
    pub running_for: i64,
    /// Why a failed pod fails the whole Job under its `podFailurePolicy`.
    pub fail_job: Option<String>,
}

/// The pure decision: `active` are the names (and indexes) of live pods.
pub fn plan(spec: &Value, counts: &Counts, active: &[(String, Option<i64>)]) -> Plan {
    let mut p = Plan::default();
    let indexed = spec["completionMode"] == "Indexed";
    let completions = spec["completions"].as_i64();
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
    let all_active = || active.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    // A FailJob rule ends the Job before anything else is weighed, as
    // upstream does: not even a last success completes it.
    if let Some(why) = &counts.fail_job {
        p.finish = Some(("Failed", "PodFailurePolicy", why.clone()));
        p.delete = all_active();
        return p;
    }
    let done = match (indexed, completions) {
        (true, Some(c)) => (0..c).all(|i| counts.completed.contains(&i)),
        (_, Some(c)) => counts.succeeded >= c,
        (_, None) => counts.succeeded > 0 && active.is_empty(),
    };
    if done {
        p.finish = Some((
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods".into(),
        ));
        p.delete = all_active();
        return p;
    }
    if counts.failed > backoff_limit {
        p.finish = Some((
            "Failed",
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".into(),
        ));
        p.delete = all_active();
        return p;
    }
    if let Some(deadline) = spec["activeDeadlineSeconds"].as_i64() {
        if counts.running_for >= deadline {
            p.finish = Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline".into(),
            ));
            p.delete = all_active();
            return p;
        }
    }
    if spec["suspend"] == true {
        p.delete = all_active();
        return p;
    }
    let want: i64 = match (indexed, completions) {
        (true, Some(c)) => parallelism.min(c - counts.completed.len() as i64),
        (_, Some(c)) => parallelism.min(c - counts.succeeded),
        (_, None) if counts.succeeded > 0 => 0,
        (_, None) => parallelism,
    };
    let have = active.len() as i64;
    if have > want {
        p.delete = active[want.max(0) as usize..]
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        return p;
    }
    if let Some(since) = counts.since_failure {
        let delay = backoff(counts.failed).as_secs() as i64;
        if since < delay {
            p.wait = Some(Duration::from_secs((delay - since) as u64));
            return p;
        }
    }
    let missing = (want - have).max(0);
    if indexed {
        let busy: BTreeSet<i64> = active.iter().filter_map(|(_, i)| *i).collect();
        p.create = (0..completions.unwrap_or(0))
            .filter(|i| !counts.completed.contains(i) && !busy.contains(i))
            .take(missing as usize)
            .map(Some)
            .collect();
    } else {
        p.create = vec![None; missing as usize];
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn active(n: usize) -> Vec<(String, Option<i64>)> {
        (0..n).map(|i| (format!("p{i}"), None)).collect()
    }

    #[test]
    fn keeps_parallelism_pods_until_completions_succeed() {
        let spec = json!({"completions": 5, "parallelism": 2, "backoffLimit": 6});
        let c = Counts::default();
        assert_eq!(plan(&spec, &c, &[]).create.len(), 2);
        assert_eq!(plan(&spec, &c, &active(1)).create.len(), 1);
        let c = Counts {
            succeeded: 4,
            ..Counts::default()
        };
        assert_eq!(
            plan(&spec, &c, &[]).create.len(),
            1,
            "only one completion is left"
        );
        let c = Counts {
            succeeded: 5,
            ..Counts::default()
        };
        assert_eq!(plan(&spec, &c, &[]).finish.map(|f| f.0), Some("Complete"));
    }

    #[test]
    fn failures_back_off_then_fail_the_job() {
        let spec = json!({"completions": 1, "parallelism": 1, "backoffLimit": 2});
        let c = Counts {
            failed: 2,
            since_failure: Some(5),
            ..Counts::default()
        };
        let p = plan(&spec, &c, &[]);
        assert!(p.create.is_empty());
        assert_eq!(
            p.wait,
            Some(Duration::from_secs(15)),
            "20 s after the second failure"
        );
        let c = Counts {
            failed: 2,
            since_failure: Some(25),
            ..Counts::default()
        };
        assert_eq!(plan(&spec, &c, &[]).create.len(), 1);
        let c = Counts {
            failed: 3,
            since_failure: Some(0),
            ..Counts::default()
        };
        let p = plan(&spec, &c, &active(1));
        assert_eq!(p.finish.map(|f| f.1), Some("BackoffLimitExceeded"));
        assert_eq!(p.delete, ["p0"]);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(30), Duration::from_secs(360));
    }

    #[test]
    fn a_fail_job_rule_ends_the_job_before_any_limit() {
        let spec = json!({"completions": 2, "parallelism": 2, "backoffLimit": 6});
        let c = Counts {
            succeeded: 1,
            failed: 1,
            since_failure: Some(0),
            fail_job: Some("Container main for pod ns/p9 failed with exit code 42".into()),
            ..Counts::default()
        };
        let p = plan(&spec, &c, &active(1));
        let (ty, reason, message) = p.finish.expect("the job finishes");
        assert_eq!((ty, reason), ("Failed", "PodFailurePolicy"));
        assert!(message.contains("p9"), "{message}");
        assert_eq!(
            (p.delete, p.create.len(), p.wait),
            (vec!["p0".to_string()], 0, None)
        );
    }

    #[test]
    fn deadline_and_suspend_stop_the_pods() {
        let spec = json!({"completions": 3, "parallelism": 3, "activeDeadlineSeconds": 60});
        let c = Counts {
            running_for: 60,
            ..Counts::default()
        };
        let p = plan(&spec, &c, &active(3));
        assert_eq!(p.finish.map(|f| f.1), Some("DeadlineExceeded"));
        assert_eq!(p.delete.len(), 3);
        let spec = json!({"completions": 3, "parallelism": 3, "suspend": true});
        let p = plan(&spec, &Counts::default(), &active(2));
        assert_eq!((p.delete.len(), p.create.len(), p.finish), (2, 0, None));
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once() {
        let spec = json!({"completions": 4, "parallelism": 2, "completionMode": "Indexed"});
        let c = Counts {
            completed: [0].into(),
            ..Counts::default()
        };
        let busy = vec![("a".to_string(), Some(1))];
        assert_eq!(plan(&spec, &c, &busy).create, [Some(2)]);
        let c = Counts {
            completed: [0, 1, 2, 3].into(),
            ..Counts::default()
        };
        assert_eq!(plan(&spec, &c, &[]).finish.map(|f| f.0), Some("Complete"));
    }

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert!(parse_indexes("x,-").is_empty());
    }
}
