//! The network configuration on stdin and CNI_ARGS, checked field by field
//! so an error names what is wrong. Part of the library so the parsers can
//! be exercised without running the plugin binary.

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use crate::{Error, NetConf};

/// 0.4.0 differs from 1.x only in the result's `ips[].version`; 0.3.x and
/// older lack CHECK and would need a different DEL contract.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/kestrel";

#[derive(Debug)]
pub struct Config {
    pub version: String,
    pub conf: NetConf,
    pub prev_result: Option<Value>,
    /// GC's list of attachments that must be kept (container id, ifname).
    pub valid_attachments: Option<Vec<(String, String)>>,
}

pub fn decode_error(e: &serde_json::Error) -> Error {
    Error::Decode {
        what: "the network configuration on stdin".into(),
        reason: e.to_string(),
    }
}

pub fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses the network configuration. On error, also returns the
/// configuration's CNI version once it is known, for the error reply.
pub fn parse_config(stdin: &[u8]) -> Result<Config, (Option<String>, Error)> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err((
            None,
            Error::Decode {
                what: "the network configuration on stdin".into(),
                reason: "stdin is empty".into(),
            },
        ));
    }
    let value: Value = serde_json::from_slice(stdin).map_err(|e| (None, decode_error(&e)))?;
    let Value::Object(obj) = value else {
        return Err((
            None,
            Error::Decode {
                what: "the network configuration on stdin".into(),
                reason: "it is not a JSON object".into(),
            },
        ));
    };
    let version = match obj.get("cniVersion") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => return Err((None, invalid("cniVersion", "must be a string"))),
        None => return Err((None, invalid("cniVersion", "is missing"))),
    };
    if !SUPPORTED.contains(&version.as_str()) {
        return Err((
            None,
            Error::IncompatibleVersion {
                requested: version,
                supported: SUPPORTED.join(", "),
            },
        ));
    }
    let fields = || -> Result<Config, Error> {
        let name = string_field(&obj, "name")?.ok_or_else(|| invalid("name", "is missing"))?;
        let kind = string_field(&obj, "type")?;
        let ipam = match obj.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(invalid("ipam", "must be an object")),
        };
        if let Some(ipam) = ipam {
            if let Some(ipam_type) = string_field(ipam, "type")? {
                if Some(&ipam_type) != kind.as_ref() {
                    return Err(Error::UnsupportedField {
                        field: "ipam.type".into(),
                        reason: format!(
                            "{ipam_type:?}: this plugin allocates addresses itself and cannot \
                             delegate to an IPAM plugin; give \"subnet\" (or \"ipam\": {{\"subnet\"}}) \
                             and no ipam.type"
                        ),
                    });
                }
            }
        }
        let top = subnet_field(&obj, "subnet", "subnet")?;
        let nested = match ipam {
            Some(m) => subnet_field(m, "subnet", "ipam.subnet")?,
            None => None,
        };
        let subnet =
            match (top, nested) {
                (Some(a), Some(b)) if a != b => {
                    return Err(invalid(
                        "subnet",
                        format!("{a} differs from ipam.subnet {b}; give one of them"),
                    ))
                }
                (Some(s), _) | (None, Some(s)) => s,
                (None, None) => return Err(invalid(
                    "subnet",
                    "is missing: give the node's pod CIDR as \"subnet\" or \"ipam\": {\"subnet\"}",
                )),
            };
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(v) => v
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| invalid("mtu", format!("{v} is not a whole number of bytes")))?,
        };
        let gso_max_size = match obj.get("gsoMaxSize") {
            None | Some(Value::Null) => crate::LEGACY_GSO_MAX_SIZE,
            Some(v) => v
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| {
                    invalid("gsoMaxSize", format!("{v} is not a whole number of bytes"))
                })?,
        };
        let data_dir = string_field(&obj, "dataDir")?.unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(invalid("prevResult", "must be an object")),
        };
        let valid_attachments = match obj.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| {
                        let id = item.get("containerID").and_then(Value::as_str);
                        let ifname = item.get("ifname").and_then(Value::as_str);
                        match (id, ifname) {
                            (Some(id), Some(ifname)) => Ok((id.to_string(), ifname.to_string())),
                            _ => Err(invalid(
                                "cni.dev/valid-attachments",
                                format!("{item} lacks a string containerID or ifname"),
                            )),
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(invalid("cni.dev/valid-attachments", "must be an array")),
        };
        Ok(Config {
            version: version.clone(),
            conf: NetConf {
                name,
                subnet,
                mtu,
                gso_max_size,
                data_dir: data_dir.into(),
            },
            prev_result,
            valid_attachments,
        })
    };
    fields().map_err(|e| (Some(version.clone()), e))
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(key, format!("{v} is not a string"))),
    }
}

fn subnet_field(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<Ipv4Net>, Error> {
    let Some(s) = string_field(obj, key).map_err(|_| invalid(field, "must be a string"))? else {
        return Ok(None);
    };
    s.parse::<Ipv4Net>().map(Some).map_err(|_| {
        invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR such as 10.244.1.0/24"),
        )
    })
}

pub fn invalid_env(name: &str, reason: &str) -> Error {
    Error::InvalidArgument {
        name: name.into(),
        reason: reason.into(),
    }
}

/// CNI_ARGS carries runtime-specific KEY=VALUE pairs (Kubernetes sends the
/// pod's name and namespace). None of them changes what this plugin does,
/// but a malformed list means the runtime and the plugin disagree about the
/// protocol, which is worth failing on.
pub fn check_cni_args(args: &str) -> Result<(), Error> {
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        if !pair.contains('=') || pair.starts_with('=') {
            return Err(invalid_env(
                "CNI_ARGS",
                &format!("{pair:?} is not KEY=VALUE (pairs are separated by ';')"),
            ));
        }
    }
    Ok(())
}
