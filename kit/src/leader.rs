//! Leader election through a `coordination.k8s.io/v1` Lease in kube-system,
//! so a second scheduler or controller-manager can stand by. The holder
//! renews every `renew` interval; a standby takes over once the lease has
//! not been renewed for `lease_duration`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, ObjectMeta, PostParams};

use super::micro_time;

/// Leader-election settings (flags shared by both components).
#[derive(Clone, Debug, clap::Args)]
pub struct LeaderArgs {
    /// Run only while holding the component's Lease in kube-system.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// How long a lease stays valid without renewal (seconds).
    #[arg(long, default_value_t = 15)]
    pub leader_elect_lease_duration: u64,
    /// How often the leader renews (seconds).
    #[arg(long, default_value_t = 2)]
    pub leader_elect_retry_period: u64,
}

/// A held lease; renewal runs in the background until dropped.
pub struct Leadership {
    /// Fires when the lease is lost: the component must stop acting.
    pub lost: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    name: String,
    me: String,
}

impl Leadership {
    /// Gives the lease up (on a clean shutdown) so a standby or a restarted
    /// process takes over at once instead of after the lease duration.
    pub async fn release(self) {
        self.task.abort();
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.me.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Attempt {
    Acquired,
    HeldBy(String),
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    duration: i32,
) -> Result<Attempt, kube::Error> {
    let now = micro_time();
    let current = api.get_opt(name).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.into()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        api.create(&PostParams::default(), &lease).await?;
        return Ok(Attempt::Acquired);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|t| {
        let age = now.0.duration_since(t.0);
        age.as_secs_f64() > f64::from(spec.lease_duration_seconds.unwrap_or(duration))
    });
    if holder != me && !holder.is_empty() && !expired {
        return Ok(Attempt::HeldBy(holder));
    }
    if holder != me {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(me.into());
    spec.lease_duration_seconds = Some(duration);
    spec.renew_time = Some(now);
    // The resourceVersion in the object makes this a compare-and-swap: two
    // standbys racing for an expired lease cannot both win.
    api.replace(name, &PostParams::default(), &lease).await?;
    Ok(Attempt::Acquired)
}

/// Blocks until this process holds the lease `name`, then keeps renewing it.
pub async fn acquire(client: kube::Client, name: &str, args: &LeaderArgs) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, "kube-system");
    let me = super::identity();
    let duration = args.leader_elect_lease_duration.max(1) as i32;
    let retry = Duration::from_secs(args.leader_elect_retry_period.max(1));
    let mut waiting_logged = false;
    loop {
        match try_acquire_or_renew(&api, name, &me, duration).await {
            Ok(Attempt::Acquired) => break,
            Ok(Attempt::HeldBy(h)) if !waiting_logged => {
                tracing::info!("lease kube-system/{name} is held by {h}; standing by");
                waiting_logged = true;
            }
            Ok(Attempt::HeldBy(_)) => {}
            Err(e) => tracing::debug!("acquiring lease {name}: {e}"),
        }
        tokio::time::sleep(retry).await;
    }
    tracing::info!("acquired lease kube-system/{name} as {me}");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let name = name.to_string();
    let (api2, name2, me2) = (api.clone(), name.clone(), me.clone());
    let task = tokio::spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        // Give up before a standby could take over, so two never act at once.
        let deadline = Duration::from_secs(duration as u64) * 2 / 3;
        loop {
            tokio::time::sleep(retry).await;
            match try_acquire_or_renew(&api, &name, &me, duration).await {
                Ok(Attempt::Acquired) => last_ok = tokio::time::Instant::now(),
                Ok(Attempt::HeldBy(h)) => {
                    tracing::error!("lease {name} was taken by {h}");
                    let _ = tx.send(true);
                    return;
                }
                Err(e) => {
                    tracing::warn!("renewing lease {name}: {e}");
                    if last_ok.elapsed() > deadline {
                        tracing::error!("could not renew lease {name} in time");
                        let _ = tx.send(true);
                        return;
                    }
                }
            }
        }
    });
    Leadership {
        lost: rx,
        task,
        api: api2,
        name: name2,
        me: me2,
    }
}

/// Runs `work` while holding the lease `name` (when `args.leader_elect`):
/// ends with an error if the lease is lost, and gives it up on SIGTERM or
/// Ctrl-C, so a standby takes over at once.
pub async fn while_leading<F>(
    client: kube::Client,
    name: &str,
    args: &LeaderArgs,
    work: impl FnOnce() -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let leadership = if args.leader_elect {
        Some(acquire(client, name, args).await)
    } else {
        None
    };
    let mut lost = leadership.as_ref().map(|l| l.lost.clone());
    tokio::select! {
        r = work() => r,
        _ = async {
            match lost.as_mut() {
                Some(l) => { let _ = l.changed().await; }
                None => std::future::pending::<()>().await,
            }
        } => anyhow::bail!("lost the {name} lease"),
        _ = super::shutdown_signal() => {
            if let Some(l) = leadership {
                l.release().await;
            }
            Ok(())
        }
    }
}
