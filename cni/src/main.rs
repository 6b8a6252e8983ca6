//! `kestrel-cni`: the CNI plugin protocol (versions 0.4.0, 1.0.0 and 1.1.0)
//! around the kestrel_cni library, for runtimes other than the kestrel
//! agent. The command comes from CNI_COMMAND, the network configuration from
//! stdin; results and errors go to stdout as JSON.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use kestrel_cni::{Attachment, Endpoint, Error, NetConf, GATEWAY};
use serde_json::{json, Value};

const LATEST: &str = "1.1.0";
/// Plugin-specific code for a bug that would otherwise have been a panic.
const INTERNAL_ERROR: u32 = 102;

use kestrel_cni::config::{
    check_cni_args, decode_error, invalid, invalid_env, parse_config, Config, SUPPORTED,
};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let reply = match read {
        Ok(_) => std::panic::catch_unwind(|| run(&ProcessEnv, &stdin)).unwrap_or_else(|_| {
            Reply::Failure(json!({
                "cniVersion": LATEST,
                "code": INTERNAL_ERROR,
                "msg": "internal error in kestrel-cni",
                "details": "the plugin panicked; its stderr has the location",
            }))
        }),
        Err(e) => failure(
            LATEST,
            &Error::Io {
                op: "reading the network configuration from stdin".into(),
                source: e,
            },
            "",
        ),
    };
    let (out, status) = match reply {
        Reply::Success(None) => (None, ExitCode::SUCCESS),
        Reply::Success(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Reply::Failure(v) => (Some(v), ExitCode::FAILURE),
    };
    if let Some(v) = out {
        let mut stdout = std::io::stdout().lock();
        // Nothing useful is left to do if stdout is gone.
        let _ = writeln!(stdout, "{v:#}");
        let _ = stdout.flush();
    }
    status
}

enum Reply {
    Success(Option<Value>),
    Failure(Value),
}

/// Where the CNI_* variables come from: the process, or a test.
trait Env {
    fn get(&self, name: &str) -> Result<Option<String>, Error>;
}

struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Result<Option<String>, Error> {
        match std::env::var(name) {
            Ok(v) if v.is_empty() => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(invalid_env(name, "is not valid UTF-8")),
        }
    }
}

fn required(env: &dyn Env, name: &str, command: &str) -> Result<String, Error> {
    env.get(name)?
        .ok_or_else(|| invalid_env(name, &format!("is not set, and {command} needs it")))
}

fn failure(version: &str, e: &Error, details: &str) -> Reply {
    Reply::Failure(json!({
        "cniVersion": version,
        "code": e.code(),
        "msg": e.to_string(),
        "details": details,
    }))
}

fn run(env: &dyn Env, stdin: &[u8]) -> Reply {
    let command = match env.get("CNI_COMMAND") {
        Ok(Some(c)) => c,
        Ok(None) => return failure(
            LATEST,
            &invalid_env("CNI_COMMAND", "is not set"),
            "this is a CNI plugin: run it with CNI_COMMAND=ADD, DEL, CHECK, STATUS, GC or VERSION",
        ),
        Err(e) => return failure(LATEST, &e, ""),
    };
    if command == "VERSION" {
        return version(stdin);
    }
    let config = match parse_config(stdin) {
        Ok(c) => c,
        Err((version, e)) => {
            let details = format!("{command}: the network configuration on stdin was rejected");
            return failure(version.as_deref().unwrap_or(LATEST), &e, &details);
        }
    };
    let details = |id: Option<&str>| match id {
        Some(id) => format!(
            "{command} of container {id} in network {}",
            config.conf.name
        ),
        None => format!("{command} in network {}", config.conf.name),
    };
    let id = env.get("CNI_CONTAINERID").ok().flatten();
    match execute(&command, env, &config) {
        Ok(v) => Reply::Success(v),
        Err(e) => failure(&config.version, &e, &details(id.as_deref())),
    }
}

fn execute(command: &str, env: &dyn Env, config: &Config) -> Result<Option<Value>, Error> {
    if let Some(args) = env.get("CNI_ARGS")? {
        check_cni_args(&args)?;
    }
    match command {
        "ADD" => {
            let att = attachment(env, command, true)?;
            let ep = block_on(kestrel_cni::add(&config.conf, &att))?;
            Ok(Some(result_json(&config.version, &att, &ep)))
        }
        "DEL" => {
            let att = attachment(env, command, false)?;
            block_on(kestrel_cni::del(&config.conf, &att))?;
            Ok(None)
        }
        "CHECK" => {
            let att = attachment(env, command, true)?;
            let ep = block_on(kestrel_cni::check(&config.conf, &att))?;
            if let Some(prev) = &config.prev_result {
                check_prev_result(prev, &att, &ep)?;
            }
            Ok(None)
        }
        "STATUS" => status(&config.conf).map(|()| None),
        "GC" => gc(config).map(|()| None),
        other => Err(invalid_env(
            "CNI_COMMAND",
            &format!("{other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    }
}

fn block_on<T>(fut: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            op: "starting the async runtime".into(),
            source,
        })?
        .block_on(fut)
}

fn attachment(env: &dyn Env, command: &str, needs_netns: bool) -> Result<Attachment, Error> {
    let container_id = required(env, "CNI_CONTAINERID", command)?;
    let ifname = required(env, "CNI_IFNAME", command)?;
    let netns = if needs_netns {
        required(env, "CNI_NETNS", command)?
    } else {
        // DEL after the namespace is gone is normal and must succeed.
        env.get("CNI_NETNS")?.unwrap_or_default()
    };
    Ok(Attachment {
        container_id,
        netns: PathBuf::from(netns),
        ifname,
    })
}

fn version(stdin: &[u8]) -> Reply {
    let mut reply_version = LATEST.to_string();
    if !stdin.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(stdin) {
            Ok(v) => {
                if let Some(asked) = v.get("cniVersion").and_then(Value::as_str) {
                    if SUPPORTED.contains(&asked) {
                        reply_version = asked.to_string();
                    }
                }
            }
            Err(e) => return failure(LATEST, &decode_error(&e), "VERSION"),
        }
    }
    Reply::Success(Some(json!({
        "cniVersion": reply_version,
        "supportedVersions": SUPPORTED,
    })))
}

fn mac_str(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn result_json(version: &str, att: &Attachment, ep: &Endpoint) -> Value {
    let mut host = json!({ "name": ep.host_ifname, "mac": mac_str(&ep.host_mac) });
    let mut pod = json!({
        "name": att.ifname,
        "mac": mac_str(&ep.pod_mac),
        "sandbox": att.netns.display().to_string(),
    });
    let mut ip = json!({
        "address": format!("{}/32", ep.ip),
        "gateway": ep.gateway.to_string(),
        "interface": 1,
    });
    if version == "0.4.0" {
        ip["version"] = json!("4");
    }
    if version == "1.1.0" {
        host["mtu"] = json!(ep.mtu);
        pod["mtu"] = json!(ep.mtu);
    }
    json!({
        "cniVersion": version,
        "interfaces": [host, pod],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": GATEWAY.to_string() }],
        "dns": {},
    })
}

/// CHECK must also hold the pod to what ADD reported to the runtime.
fn check_prev_result(prev: &Value, att: &Attachment, ep: &Endpoint) -> Result<(), Error> {
    let want = format!("{}/32", ep.ip);
    let ips: Vec<&str> = prev
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("address")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    if !ips.is_empty() && !ips.contains(&want.as_str()) {
        return Err(Error::CheckFailed(format!(
            "prevResult lists {} but container {} holds {want}",
            ips.join(", "),
            att.container_id
        )));
    }
    let names: Vec<&str> = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|i| i.get("name")?.as_str()).collect())
        .unwrap_or_default();
    for expected in [ep.host_ifname.as_str(), att.ifname.as_str()] {
        if !names.is_empty() && !names.contains(&expected) {
            return Err(Error::CheckFailed(format!(
                "prevResult does not list the interface {expected}"
            )));
        }
    }
    Ok(())
}

/// Ready means a pod added now would get an address.
fn status(conf: &NetConf) -> Result<(), Error> {
    let dir = conf.data_dir.join(&conf.name);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::NotAvailable(format!(
            "the lease directory {} is unusable: {e}",
            dir.display()
        ))
    })?;
    let leases = kestrel_cni::leases(conf).map_err(|e| match e {
        Error::InvalidConfig { .. } => e,
        other => Error::NotAvailable(format!("the leases cannot be read: {other}")),
    })?;
    let prefix = u32::from(conf.subnet.prefix_len());
    // Every address but network, broadcast and the node's .1.
    let size = (1u64 << (32 - prefix)).saturating_sub(3);
    let used = leases
        .iter()
        .filter(|(ip, _)| conf.subnet.contains(ip))
        .count() as u64;
    if used >= size {
        return Err(Error::NotAvailable(format!(
            "all {size} pod addresses of {} are leased",
            conf.subnet
        )));
    }
    Ok(())
}

/// Releases what belongs to containers the runtime no longer knows about.
fn gc(config: &Config) -> Result<(), Error> {
    let Some(valid) = &config.valid_attachments else {
        return Err(invalid(
            "cni.dev/valid-attachments",
            "is missing; GC needs the list of attachments to keep",
        ));
    };
    let keep: HashSet<&str> = valid.iter().map(|(id, _)| id.as_str()).collect();
    let stale: Vec<String> = kestrel_cni::leases(&config.conf)?
        .into_iter()
        .map(|(_, id)| id)
        .filter(|id| !keep.contains(id.as_str()))
        .collect();
    block_on(async {
        for id in stale {
            let att = Attachment {
                container_id: id,
                netns: PathBuf::new(),
                ifname: "eth0".into(),
            };
            kestrel_cni::del(&config.conf, &att).await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);

    impl Env for MapEnv {
        fn get(&self, name: &str) -> Result<Option<String>, Error> {
            Ok(self.0.get(name).map(|s| s.to_string()))
        }
    }

    fn fail(reply: Reply) -> Value {
        match reply {
            Reply::Failure(v) => v,
            Reply::Success(v) => panic!("expected an error, got {v:?}"),
        }
    }

    fn code_of(stdin: &str) -> (u64, String) {
        let env = MapEnv(HashMap::from([
            ("CNI_COMMAND", "STATUS"),
            ("CNI_CONTAINERID", "c1"),
        ]));
        let v = fail(run(&env, stdin.as_bytes()));
        (
            v["code"].as_u64().unwrap(),
            v["msg"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn bad_input_gives_the_spec_codes() {
        let (code, msg) = code_of("{\"cniVersion\": ");
        assert_eq!(code, 6);
        assert!(msg.contains("line 1 column"), "{msg}");
        assert_eq!(code_of("").0, 6);
        assert_eq!(code_of("[1]").0, 6);
        assert_eq!(
            code_of(r#"{"cniVersion":"0.2.0","name":"n","subnet":"10.0.0.0/24"}"#).0,
            1
        );
        let (code, msg) = code_of(r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0/24"}"#);
        assert_eq!(code, 7);
        assert!(msg.contains("subnet"), "{msg}");
        let (code, msg) = code_of(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"x"}}"#);
        assert_eq!(code, 7);
        assert!(msg.contains("ipam.subnet"), "{msg}");
        let (code, msg) =
            code_of(r#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","mtu":"big"}"#);
        assert_eq!(code, 7);
        assert!(msg.contains("mtu"), "{msg}");
        let (code, msg) = code_of(
            r#"{"cniVersion":"1.0.0","name":"n","type":"kestrel-cni","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#,
        );
        assert_eq!(code, 2);
        assert!(msg.contains("ipam.type"), "{msg}");
        assert_eq!(
            code_of(r#"{"cniVersion":"1.0.0","subnet":"10.0.0.0/24"}"#).0,
            7
        );
    }

    #[test]
    fn missing_variables_are_named() {
        let stdin =
            br#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24","dataDir":"/nonexistent"}"#;
        let env = MapEnv(HashMap::from([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]));
        let v = fail(run(&env, stdin));
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"), "{v}");
        assert_eq!(v["cniVersion"], "1.0.0");

        let env = MapEnv(HashMap::from([("CNI_COMMAND", "FROB")]));
        assert_eq!(fail(run(&env, stdin))["code"], 4);
        let env = MapEnv(HashMap::from([
            ("CNI_COMMAND", "ADD"),
            ("CNI_ARGS", "a=b;junk"),
        ]));
        let v = fail(run(&env, stdin));
        assert!(v["msg"].as_str().unwrap().contains("CNI_ARGS"), "{v}");
    }

    #[test]
    fn version_reply() {
        let env = MapEnv(HashMap::from([("CNI_COMMAND", "VERSION")]));
        let Reply::Success(Some(v)) = run(&env, br#"{"cniVersion":"1.0.0"}"#) else {
            panic!("VERSION failed")
        };
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        let Reply::Success(Some(v)) = run(&env, b"") else {
            panic!("VERSION failed")
        };
        assert_eq!(v["cniVersion"], LATEST);
    }

    #[test]
    fn result_shapes_per_version() {
        let att = Attachment {
            container_id: "c".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
        };
        let ep = Endpoint {
            ip: "10.0.0.2".parse().unwrap(),
            gateway: GATEWAY,
            pod_mac: [2, 0, 0, 0, 0, 1],
            host_ifname: "kstabc".into(),
            host_ifindex: 7,
            host_mac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
        };
        let v = result_json("1.0.0", &att, &ep);
        assert_eq!(v["ips"][0]["address"], "10.0.0.2/32");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(v["interfaces"][0]["mac"], "02:00:00:00:00:02");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(result_json("0.4.0", &att, &ep)["ips"][0]["version"], "4");
        assert_eq!(
            result_json("1.1.0", &att, &ep)["interfaces"][1]["mtu"],
            1500
        );
        assert!(check_prev_result(&v, &att, &ep).is_ok());
        let mut other = v.clone();
        other["ips"][0]["address"] = json!("10.0.0.3/32");
        assert_eq!(
            check_prev_result(&other, &att, &ep).unwrap_err().code(),
            101
        );
    }
}
