//! Objects in etcd: JSON under `/registry/...`, `resourceVersion` = the
//! key's etcd mod revision, writes guarded by etcd transactions so two
//! writers can never both win.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde_json::Value;

/// How long one etcd call may take before the request fails with 5xx.
const ETCD_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from the store; handlers turn them into Status objects.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    AlreadyExists,
    #[error("resource version conflict")]
    Conflict,
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    #[error("stored object at {0} is not valid JSON: {1}")]
    Corrupt(String, String),
}

impl From<etcd_client::Error> for StorageError {
    fn from(e: etcd_client::Error) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

type Result<T> = std::result::Result<T, StorageError>;

/// An object read from etcd with its revision.
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Value,
    pub rev: i64,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<(String, Stored)>,
    /// The etcd revision the list was read at.
    pub revision: i64,
    /// Whether more keys follow the last one returned.
    pub more: bool,
}

/// Handle on etcd; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    client: Client,
    /// How it reaches etcd, for connections of its own to single members.
    tls: Option<EtcdTls>,
}

async fn timed<T>(
    fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(ETCD_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StorageError::Unavailable("etcd request timed out".into())),
    }
}

/// Retries after the first failure, then waits three times longer each
/// time: about 1.3 s in all, enough for the client to stop picking a
/// member that went away.
const RETRIES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(900),
];

/// Whether the call failed on the way to etcd (the member it went to is
/// gone or going) rather than with etcd's answer. Another member may
/// serve it.
fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match e {
        Error::TransportError(_) => true,
        Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// Runs `op` until etcd answers, retrying transport failures; the second
/// value says whether an earlier attempt failed that way, in which case a
/// write may have been applied by it.
async fn retried<T, F, Fut>(mut op: F) -> Result<(T, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut ambiguous = false;
    for delay in RETRIES.iter().map(Some).chain([None]) {
        match tokio::time::timeout(ETCD_TIMEOUT, op()).await {
            Ok(Ok(v)) => return Ok((v, ambiguous)),
            Ok(Err(e)) if transient(&e) => match delay {
                Some(d) => {
                    tracing::warn!(error = %e, "etcd call failed on the way; retrying");
                    ambiguous = true;
                    tokio::time::sleep(*d).await;
                }
                None => return Err(e.into()),
            },
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(StorageError::Unavailable("etcd request timed out".into())),
        }
    }
    unreachable!("the last attempt returns")
}

/// Whether `stored` is the object `ours` would have written (the
/// resourceVersion aside): a retried write whose first attempt went
/// through before the connection broke.
fn same_write(stored: &Stored, ours: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        v
    };
    strip(&stored.value) == strip(ours)
}

/// Decodes a stored value and stamps its revision into `metadata.resourceVersion`.
pub fn decode(key: &[u8], value: &[u8], rev: i64) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(value).map_err(|e| {
        StorageError::Corrupt(String::from_utf8_lossy(key).into_owned(), e.to_string())
    })?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Ok(v)
}

fn encode(value: &Value) -> Vec<u8> {
    let mut v = value.clone();
    // The revision is the key's own; storing it would only let it go stale.
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// TLS towards etcd (--etcd-cafile, --etcd-certfile, --etcd-keyfile), read
/// once at start so a missing file fails the start, not the first request.
#[derive(Clone)]
pub struct EtcdTls {
    ca: Option<String>,
    identity: Option<(String, String)>,
}

impl EtcdTls {
    /// None when no etcd TLS flag is given (plain http URLs).
    pub fn load(config: &super::Config) -> anyhow::Result<Option<Self>> {
        let read = |flag: &str, path: &Option<std::path::PathBuf>| {
            path.as_ref()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("--{flag} {}: {e}", p.display()))
                })
                .transpose()
        };
        let ca = read("etcd-cafile", &config.etcd_cafile)?;
        let cert = read("etcd-certfile", &config.etcd_certfile)?;
        let key = read("etcd-keyfile", &config.etcd_keyfile)?;
        if ca.is_none() && cert.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            ca,
            identity: cert.zip(key),
        }))
    }

    /// The client options. The name checked in each member's certificate
    /// is the host of the URL dialled, so one set serves every member.
    pub fn options(&self) -> etcd_client::TlsOptions {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        tls
    }
}

impl Storage {
    /// Connects to etcd. The client reconnects by itself after etcd restarts.
    pub async fn connect(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Self> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(ETCD_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls {
            opts = opts.with_tls(tls.options());
        }
        let client = timed(Client::connect(endpoints, Some(opts))).await?;
        Ok(Self {
            client,
            tls: tls.cloned(),
        })
    }

    /// The TLS settings towards etcd, if any.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The raw client, for watches.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The current etcd revision.
    pub async fn current_revision(&self) -> Result<i64> {
        let kv = self.client.kv_client();
        let (resp, _) = retried(|| {
            let mut kv = kv.clone();
            async move {
                kv.get("/registry/", Some(GetOptions::new().with_count_only()))
                    .await
            }
        })
        .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Reads one object.
    pub async fn get(&self, key: &str) -> Result<Option<Stored>> {
        let kv = self.client.kv_client();
        let (resp, _) = retried(|| {
            let mut kv = kv.clone();
            async move { kv.get(key, None).await }
        })
        .await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Stored {
                value: decode(kv.key(), kv.value(), kv.mod_revision())?,
                rev: kv.mod_revision(),
            })),
        }
    }

    /// Lists keys under `prefix` in key order, starting after `start_after`
    /// and at revision `at` when given (so the pages of one list agree).
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<i64>,
        at: Option<i64>,
    ) -> Result<Page> {
        let kv = self.client.kv_client();
        let range_end = prefix_end(prefix.as_bytes());
        let start: Vec<u8> = match start_after {
            Some(k) => {
                let mut k = k.as_bytes().to_vec();
                k.push(0);
                k
            }
            None => prefix.as_bytes().to_vec(),
        };
        let mut opts = GetOptions::new()
            .with_range(range_end)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if let Some(l) = limit.filter(|l| *l > 0) {
            opts = opts.with_limit(l);
        }
        if let Some(rev) = at.filter(|r| *r > 0) {
            opts = opts.with_revision(rev);
        }
        let (resp, _) = retried(|| {
            let (mut kv, start, opts) = (kv.clone(), start.clone(), opts.clone());
            async move { kv.get(start, Some(opts)).await }
        })
        .await?;
        let revision = match at {
            Some(r) if r > 0 => r,
            _ => resp.header().map(|h| h.revision()).unwrap_or(0),
        };
        let mut items = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            items.push((
                key,
                Stored {
                    value: decode(kv.key(), kv.value(), kv.mod_revision())?,
                    rev: kv.mod_revision(),
                },
            ));
        }
        Ok(Page {
            items,
            revision,
            more: resp.more(),
        })
    }

    /// Creates `key` (and the `claims`, keys that reserve an allocated
    /// value such as a ClusterIP) only if none of them exists yet.
    pub async fn create(&self, key: &str, value: &Value, claims: &[String]) -> Result<i64> {
        let mut compares = vec![Compare::version(key, CompareOp::Equal, 0)];
        let mut ops = vec![TxnOp::put(key, encode(value), None)];
        for c in claims {
            compares.push(Compare::version(c.as_str(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(c.as_str(), key, None));
        }
        let txn = Txn::new().when(compares).and_then(ops);
        let kv = self.client.kv_client();
        let (resp, ambiguous) = retried(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await?;
        if !resp.succeeded() {
            // Tell "the object exists" from "a claimed value is taken".
            return match self.get(key).await? {
                Some(s) if ambiguous && same_write(&s, value) => Ok(s.rev),
                Some(_) => Err(StorageError::AlreadyExists),
                None => Err(StorageError::Conflict),
            };
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Replaces `key` if it is still at revision `expected`, adding and
    /// releasing claims in the same transaction.
    pub async fn update(
        &self,
        key: &str,
        value: &Value,
        expected: i64,
        add: &[String],
        release: &[String],
    ) -> Result<i64> {
        let mut compares = vec![Compare::mod_revision(key, CompareOp::Equal, expected)];
        let mut ops = vec![TxnOp::put(key, encode(value), None)];
        for c in add {
            compares.push(Compare::version(c.as_str(), CompareOp::Equal, 0));
            ops.push(TxnOp::put(c.as_str(), key, None));
        }
        for r in release {
            ops.push(TxnOp::delete(r.as_str(), None));
        }
        let txn = Txn::new().when(compares).and_then(ops);
        let kv = self.client.kv_client();
        let (resp, ambiguous) = retried(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await?;
        if !resp.succeeded() {
            return match self.get(key).await? {
                None => Err(StorageError::NotFound),
                Some(s) if ambiguous && same_write(&s, value) => Ok(s.rev),
                Some(s) if s.rev != expected => Err(StorageError::Conflict),
                Some(_) => Err(StorageError::AlreadyExists),
            };
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Deletes `key` if it is still at revision `expected`, releasing claims.
    /// Returns the revision of the deletion.
    pub async fn delete(&self, key: &str, expected: i64, release: &[String]) -> Result<i64> {
        let mut ops = vec![TxnOp::delete(key, None)];
        for r in release {
            ops.push(TxnOp::delete(r.as_str(), None));
        }
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then(ops);
        let mut kv = self.client.kv_client();
        let resp = timed(kv.txn(txn)).await?;
        if !resp.succeeded() {
            return match self.get(key).await? {
                None => Err(StorageError::NotFound),
                Some(_) => Err(StorageError::Conflict),
            };
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Keys (not values) under a prefix, for allocators.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let kv = self.client.kv_client();
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix.as_bytes()))
            .with_keys_only();
        let (resp, _) = retried(|| {
            let (mut kv, opts) = (kv.clone(), opts.clone());
            async move { kv.get(prefix, Some(opts)).await }
        })
        .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    /// Deletes every key under a prefix (the objects of a deleted
    /// CustomResourceDefinition). Deleting nothing is no error.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let kv = self.client.kv_client();
        let opts = etcd_client::DeleteOptions::new().with_range(prefix_end(prefix.as_bytes()));
        retried(|| {
            let (mut kv, opts) = (kv.clone(), opts.clone());
            async move { kv.delete(prefix, Some(opts)).await }
        })
        .await?;
        Ok(())
    }

    /// Puts a value unconditionally (used only for bootstrap objects).
    pub async fn put_if_absent(&self, key: &str, value: &Value) -> Result<bool> {
        match self.create(key, value, &[]).await {
            Ok(_) => Ok(true),
            Err(StorageError::AlreadyExists) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
