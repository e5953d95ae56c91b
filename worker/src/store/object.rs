//! The object-store tier, through the `object_store` crate: `s3://bucket/prefix`,
//! `file:///path` or `memory://`.
//!
//! Keys are deterministic, `{prefix}/{store id}/{job}/{partition}/{object id}`,
//! so a request that timed out and landed later is still found and deleted
//! by prefix. Every request runs under a timeout and is retried with
//! exponential backoff; a request that still fails is an `Unavailable` error
//! naming the store, the operation and the key. Objects are immutable: an
//! overflow flush is one single PUT (readable as soon as it returns); a
//! migration is one object, by multipart upload when large.

use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use terrace_rpc::clock;
use terrace_tier_api::{ErrorKind, JobId, PartitionKey, TierError, TierResult, error_text};

use super::StoreError;

use crate::config::ObjectStoreConfig;

/// Counters of the object-store tier.
#[derive(Debug, Default)]
pub struct ObjectCounters {
    /// Bytes and objects currently held for live partitions.
    pub bytes: AtomicU64,
    pub objects: AtomicU64,
    pub bytes_overflowed: AtomicU64,
    pub bytes_migrated: AtomicU64,
    pub partitions_migrated: AtomicU64,
    /// Bytes and partitions rewritten by compaction (overflow objects laid
    /// out again segment by segment).
    pub bytes_compacted: AtomicU64,
    pub partitions_compacted: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Ranges fetched (ranged GETs).
    pub gets: AtomicU64,
    /// Requests that failed after every retry.
    pub failures: AtomicU64,
    /// The same, by operation ([`ObjectOp`] order).
    failures_by_op: [AtomicU64; ObjectOp::ALL.len()],
}

impl ObjectCounters {
    /// Requests of `op` that failed for good.
    pub fn failures_of(&self, op: ObjectOp) -> u64 {
        self.failures_by_op[op as usize].load(Ordering::Relaxed)
    }
}

/// What a request to the object store does, as its failures are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectOp {
    Get,
    Put,
    /// A multipart upload (a migration's object).
    Multipart,
    Delete,
    List,
    Copy,
}

impl ObjectOp {
    pub const ALL: [ObjectOp; 6] = [
        ObjectOp::Get,
        ObjectOp::Put,
        ObjectOp::Multipart,
        ObjectOp::Delete,
        ObjectOp::List,
        ObjectOp::Copy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectOp::Get => "get",
            ObjectOp::Put => "put",
            ObjectOp::Multipart => "multipart",
            ObjectOp::Delete => "delete",
            ObjectOp::List => "list",
            ObjectOp::Copy => "copy",
        }
    }
}

/// The name of a durable partition's index object in its prefix.
pub const INDEX_OBJECT: &str = "index";
/// The object another worker leaves in a lost worker's partition prefix
/// once it adopted that partition (its other objects deleted): the lost
/// worker, should it come back, drops its own copy.
pub const ADOPTED_MARKER: &str = "adopted";

#[derive(Debug)]
pub struct ObjectTier {
    store: Arc<dyn ObjectStore>,
    /// The URL without credentials, for messages.
    url: String,
    /// The URL's path: every worker's objects are under it.
    base: String,
    /// `{url path}/{store id}`.
    root: String,
    settings: ObjectStoreConfig,
    pub counters: ObjectCounters,
    /// The last failure, and whether a request succeeded since.
    last_error: Mutex<Option<String>>,
    available: std::sync::atomic::AtomicBool,
}

/// Builds the store named by `settings.url`.
pub fn build_store(settings: &ObjectStoreConfig) -> TierResult<(Arc<dyn ObjectStore>, ObjectPath)> {
    let bad = |e: &dyn std::fmt::Display| {
        TierError::bad_input(format!("object store {}: {e}", redact(&settings.url)))
    };
    let invalid = |what: String, e: Box<dyn std::error::Error + Send + Sync>| {
        TierError::with_source(
            ErrorKind::BadInput,
            format!("object store {}{what}", redact(&settings.url)),
            e,
        )
    };
    let url = url::Url::parse(&settings.url).map_err(|e| invalid(String::new(), e.into()))?;
    match url.scheme() {
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            // reqwest is built without a default TLS provider: use ring's
            // (a second install in one process is refused, harmlessly).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad(&"an s3 URL names a bucket: s3://bucket/prefix"))?;
            // Environment first (AWS_ENDPOINT, AWS_ALLOW_HTTP, credentials),
            // then the config file's options. Timeouts go in as config keys:
            // replacing the client options would drop AWS_ALLOW_HTTP.
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in &settings.options {
                let key: AmazonS3ConfigKey =
                    key.to_ascii_lowercase()
                        .parse()
                        .map_err(|e: object_store::Error| {
                            invalid(format!(": option {key}"), e.into())
                        })?;
                builder = builder.with_config(key, value.clone());
            }
            // Terrace bounds every operation itself (`ObjectTier::retry`,
            // `put_parts_once`); the client's own limit is only a ceiling
            // above the longest of those (a large multipart completion).
            let timeout = humantime_secs(CLIENT_TIMEOUT_CEILING);
            builder = builder
                .with_config("timeout".parse().map_err(|e| bad(&e))?, timeout)
                .with_config(
                    "connect_timeout".parse().map_err(|e| bad(&e))?,
                    humantime_secs(settings.request_timeout.min(Duration::from_secs(5))),
                )
                // Terrace retries every request itself, the same way for every store.
                .with_retry(object_store::RetryConfig {
                    max_retries: 0,
                    ..Default::default()
                });
            let store = builder.build().map_err(|e| bad(&e))?;
            Ok((Arc::new(store), ObjectPath::from(url.path())))
        }
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| bad(&"a file URL names an absolute path"))?;
            std::fs::create_dir_all(&path).map_err(|e| bad(&e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| bad(&e))?;
            Ok((Arc::new(store), ObjectPath::default()))
        }
        "memory" => Ok((
            Arc::new(object_store::memory::InMemory::new()),
            ObjectPath::default(),
        )),
        other => Err(bad(&format!(
            "unsupported scheme {other}: use s3://, file:// or memory://"
        ))),
    }
}

/// The S3 client's own request timeout: above any deadline Terrace sets.
const CLIENT_TIMEOUT_CEILING: Duration = Duration::from_secs(3600);

fn humantime_secs(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The URL with any user info removed.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.to_string(),
    }
}

impl ObjectTier {
    /// An object tier over `store` (already built, maybe wrapped by tests),
    /// whose keys start with `base`/`store_id`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        base: ObjectPath,
        store_id: &str,
        settings: ObjectStoreConfig,
    ) -> ObjectTier {
        let base = base.as_ref().trim_matches('/').to_string();
        let root = if base.is_empty() {
            store_id.to_string()
        } else {
            format!("{base}/{store_id}")
        };
        ObjectTier {
            store,
            url: redact(&settings.url),
            base,
            root,
            settings,
            counters: ObjectCounters::default(),
            last_error: Mutex::new(None),
            available: std::sync::atomic::AtomicBool::new(true),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything of this worker is under this prefix.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn job_prefix(&self, job: &JobId) -> String {
        format!("{}/{}", self.root, super::names::job_name(job))
    }

    pub fn partition_prefix(&self, key: &PartitionKey) -> String {
        format!(
            "{}/{}",
            self.job_prefix(&key.job),
            super::names::partition_name(&key.partition)
        )
    }

    /// Whether `prefix` names a partition under this store's URL (any
    /// worker's): a peer handing a partition over names its objects so.
    pub fn is_store_prefix(&self, prefix: &str) -> bool {
        let inside = if self.base.is_empty() {
            Some(prefix)
        } else {
            prefix
                .strip_prefix(self.base.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
        };
        // worker / job / partition, no empty or relative parts
        inside.is_some_and(|rest| {
            let parts: Vec<&str> = rest.split('/').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && *p != "." && *p != "..")
        })
    }

    /// Where another worker's objects are: its store id under this store's URL.
    pub fn root_of(&self, store_id: &str) -> String {
        if self.base.is_empty() {
            store_id.to_string()
        } else {
            format!("{}/{store_id}", self.base)
        }
    }

    /// The object holding a durable partition's index, beside its data.
    pub fn index_key(prefix: &str) -> ObjectPath {
        ObjectPath::from(format!("{prefix}/{INDEX_OBJECT}"))
    }

    /// The marker of a partition adopted by another worker (see [`ADOPTED_MARKER`]).
    pub fn adopted_key(prefix: &str) -> ObjectPath {
        ObjectPath::from(format!("{prefix}/{ADOPTED_MARKER}"))
    }

    pub fn object_key(prefix: &str, id: u32) -> ObjectPath {
        ObjectPath::from(format!("{prefix}/{id:010}"))
    }

    /// Whether the last request succeeded (the store is taking data).
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock poisoned").clone()
    }

    /// Runs `op` under the request timeout, retrying with backoff. Errors
    /// that retrying cannot fix (not found, refused) fail at once.
    async fn retry<T, F, Fut>(&self, kind: ObjectOp, key: &str, mut op: F) -> TierResult<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let what = kind.as_str();
        let mut backoff = self.settings.backoff;
        let mut attempt = 0u32;
        loop {
            let error = match clock::timeout(self.settings.request_timeout, op()).await {
                Ok(Ok(value)) => {
                    self.available.store(true, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) => {
                    let permanent = matches!(
                        e,
                        object_store::Error::NotFound { .. }
                            | object_store::Error::AlreadyExists { .. }
                            | object_store::Error::Precondition { .. }
                            | object_store::Error::NotSupported { .. }
                            | object_store::Error::NotImplemented { .. }
                            | object_store::Error::PermissionDenied { .. }
                            | object_store::Error::Unauthenticated { .. }
                            | object_store::Error::InvalidPath { .. }
                    );
                    if permanent {
                        let error = StoreError::ObjectStore {
                            url: self.url.clone(),
                            op: what,
                            key: key.to_string(),
                            source: e,
                        };
                        if error.kind() != ErrorKind::PartitionNotFound {
                            self.failed(kind, &error_text(&error));
                        }
                        return Err(error.into());
                    }
                    Some(e)
                }
                Err(_) => None,
            };
            attempt += 1;
            if attempt > self.settings.retries {
                let failed = format!(
                    "object store {}: {what} {key} failed after {attempt} attempts",
                    self.url
                );
                let error = match error {
                    Some(e) => TierError::with_source(ErrorKind::Unavailable, failed, e),
                    None => StoreError::ObjectStoreFailed(format!(
                        "{failed}: no answer within {:?}",
                        self.settings.request_timeout
                    ))
                    .into(),
                };
                self.failed(kind, &error.full_message());
                return Err(error);
            }
            let error = match &error {
                Some(e) => e.to_string(),
                None => format!("no answer within {:?}", self.settings.request_timeout),
            };
            tracing::debug!(store = %self.url, op = what, key, attempt, %error, "object store request failed; retrying");
            clock::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    fn failed(&self, op: ObjectOp, message: &str) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        self.counters.failures_by_op[op as usize].fetch_add(1, Ordering::Relaxed);
        self.available.store(false, Ordering::Relaxed);
        *self.last_error.lock().expect("error lock poisoned") = Some(message.to_string());
    }

    /// Stores `slices` as one object with a single PUT.
    pub async fn put(&self, key: &ObjectPath, slices: &[Bytes]) -> TierResult<()> {
        let payload: PutPayload = slices.iter().cloned().collect();
        self.retry(ObjectOp::Put, key.as_ref(), || {
            self.store.put(key, payload.clone())
        })
        .await
        .map(|_| ())
    }

    /// Stores an object from `parts`, produced one at a time (a multipart
    /// upload; a single PUT when there is only one part). On failure the
    /// upload is aborted and the whole object is tried again, up to the retry
    /// count; `parts` is then called again from the start.
    pub async fn put_parts<F, Fut>(
        &self,
        key: &ObjectPath,
        num_parts: usize,
        mut part: F,
    ) -> TierResult<()>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = TierResult<Bytes>>,
    {
        if num_parts <= 1 {
            let body = part(0).await?;
            return self.put(key, &[body]).await;
        }
        let mut attempt = 0u32;
        let mut backoff = self.settings.backoff;
        loop {
            let result = self.put_parts_once(key, num_parts, &mut part).await;
            match result {
                Ok(()) => {
                    self.available.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(PartError::Local(e)) => return Err(e),
                Err(PartError::Store { what, source }) => {
                    attempt += 1;
                    if attempt > self.settings.retries {
                        let failed = format!(
                            "object store {}: multipart upload {key} failed after {attempt} attempts: {what}",
                            self.url
                        );
                        let error = match source {
                            Some(e) => TierError::with_source(ErrorKind::Unavailable, failed, e),
                            None => StoreError::ObjectStoreFailed(failed).into(),
                        };
                        self.failed(ObjectOp::Multipart, &error.full_message());
                        return Err(error);
                    }
                    clock::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn put_parts_once<F, Fut>(
        &self,
        key: &ObjectPath,
        num_parts: usize,
        part: &mut F,
    ) -> Result<(), PartError>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = TierResult<Bytes>>,
    {
        let timeout = self.settings.request_timeout;
        let store_err =
            |what: String, source: Option<object_store::Error>| PartError::Store { what, source };
        let mut upload = match clock::timeout(timeout, self.store.put_multipart(key)).await {
            Ok(Ok(upload)) => upload,
            Ok(Err(e)) => return Err(store_err("start".to_string(), Some(e))),
            Err(_) => {
                return Err(store_err(
                    format!("start: no answer within {timeout:?}"),
                    None,
                ));
            }
        };
        let mut outcome = Ok(());
        for i in 0..num_parts {
            let body = match part(i).await {
                Ok(body) => body,
                Err(e) => {
                    outcome = Err(PartError::Local(e));
                    break;
                }
            };
            match clock::timeout(timeout, upload.put_part(body.into())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    outcome = Err(store_err(format!("part {i}"), Some(e)));
                    break;
                }
                Err(_) => {
                    outcome = Err(store_err(
                        format!("part {i}: no answer within {timeout:?}"),
                        None,
                    ));
                    break;
                }
            }
        }
        if outcome.is_ok() {
            // A server may assemble the parts before it answers (s3s-fs
            // copies them; AWS documents completions taking minutes): one
            // request timeout per part.
            let complete_timeout = timeout
                .saturating_mul(u32::try_from(num_parts).unwrap_or(u32::MAX).max(1))
                .min(CLIENT_TIMEOUT_CEILING);
            match clock::timeout(complete_timeout, upload.complete()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => outcome = Err(store_err("complete".to_string(), Some(e))),
                Err(_) => {
                    outcome = Err(store_err(
                        format!("complete: no answer within {complete_timeout:?}"),
                        None,
                    ))
                }
            }
        }
        // Best effort: an upload left behind is invisible and a bucket
        // lifecycle rule removes it (docs/operations.md).
        let _ = clock::timeout(timeout, upload.abort()).await;
        outcome
    }

    /// Reads `ranges` of `key`, one ranged GET per range (callers coalesce).
    pub async fn get_ranges(
        &self,
        key: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> TierResult<Vec<Bytes>> {
        let out = self
            .retry(ObjectOp::Get, key.as_ref(), || {
                self.store.get_ranges(key, ranges)
            })
            .await?;
        let total: usize = out.iter().map(Bytes::len).sum();
        self.counters
            .bytes_read
            .fetch_add(total as u64, Ordering::Relaxed);
        self.counters
            .gets
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Every object key under `prefix` with its size.
    pub async fn list(&self, prefix: &str) -> TierResult<Vec<(ObjectPath, u64)>> {
        let (all, _) = self.list_ending(prefix, "", usize::MAX).await?;
        Ok(all)
    }

    /// The keys under `prefix` that end with `suffix`, at most `max` of them,
    /// and whether more matched. Keys that do not match are not kept, so a
    /// prefix of millions of objects costs only what matches.
    pub async fn list_ending(
        &self,
        prefix: &str,
        suffix: &str,
        max: usize,
    ) -> TierResult<(Vec<(ObjectPath, u64)>, bool)> {
        let path = ObjectPath::from(prefix);
        self.retry(ObjectOp::List, prefix, || async {
            let mut stream = self.store.list(Some(&path));
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                if meta.location.as_ref().ends_with(suffix) {
                    if out.len() == max {
                        return Ok((out, true));
                    }
                    out.push((meta.location, meta.size));
                }
            }
            Ok((out, false))
        })
        .await
    }

    /// Whether `key` exists (a HEAD request).
    pub async fn exists(&self, key: &ObjectPath) -> TierResult<bool> {
        let found = self
            .retry(ObjectOp::Get, key.as_ref(), || async {
                match self.store.head(key).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(found)
    }

    /// Copies `from` to `to` inside the store (server side on S3: the bytes
    /// do not pass through the worker).
    pub async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> TierResult<()> {
        self.retry(ObjectOp::Copy, from.as_ref(), || self.store.copy(from, to))
            .await
    }

    /// Deletes `key`; a missing object is fine.
    pub async fn delete(&self, key: &ObjectPath) -> TierResult<()> {
        match self
            .retry(ObjectOp::Delete, key.as_ref(), || self.store.delete(key))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == terrace_tier_api::ErrorKind::PartitionNotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes every object under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> TierResult<usize> {
        let objects = self.list(prefix).await?;
        for (key, _) in &objects {
            self.delete(key).await?;
        }
        Ok(objects.len())
    }
}

enum PartError {
    /// Producing a part failed (a local read): not the store's fault.
    Local(TierError),
    /// The store failed `what` (a part, the completion), with the store's
    /// error when it answered.
    Store {
        what: String,
        source: Option<object_store::Error>,
    },
}
