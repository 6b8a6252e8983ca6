//! The four patch formats a Kubernetes API server accepts, over whole objects
//! as `serde_json::Value`:
//!
//! * [`json_patch`]: RFC 6902 (`application/json-patch+json`),
//! * [`merge_patch`]: RFC 7386 (`application/merge-patch+json`),
//! * [`strategic_merge_patch`]: Kubernetes' strategic merge patch
//!   (`application/strategic-merge-patch+json`), what `kubectl apply`
//!   (client-side), `kubectl edit` and the kubelet send,
//! * [`apply_merge`]: the merge behind server-side apply
//!   (`application/apply-patch+yaml`).
//!
//! All of them take untrusted bodies, so they report malformed input as a
//! [`PatchError`] and never panic.
//!
//! Where the input has a type conflict that is not a malformed directive (the
//! patch has a list where the live object has a map, a scalar where it has an
//! object, ...), the strategic and apply merges follow Kubernetes: the patch
//! value replaces the live one.
//!
//! Deliberate differences from Kubernetes' strategic merge:
//! * an item that is new to a merged list goes after the live items it is not
//!   ordered against (Kubernetes puts it in front when there is no
//!   `$setElementOrder`), so a plain patch appends;
//! * `$setElementOrder` is not checked against the order of the patch list;
//! * directive keys never reach the result, also inside values that are new
//!   to the object, and `null`s inside new values are dropped;
//! * `$deleteFromPrimitiveList` only ever removes values.

mod json;
mod merge;
mod strategic;

pub use json::json_patch;
pub use merge::merge_patch;
pub use strategic::{
    apply_merge, apply_merge_with, list_strategy, strategic_merge_patch, ListStrategy, Lists,
};

#[cfg(test)]
mod tests;

/// Why a patch could not be applied. The messages are meant for the user who
/// sent the patch, so they name the operation or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The JSON patch body is not a list of well-formed operations.
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    /// A well-formed JSON patch operation could not be carried out.
    #[error("JSON patch operation {index} ({op} {path}) failed: {reason}")]
    JsonPatchFailed {
        index: usize,
        op: String,
        path: String,
        reason: String,
    },
    /// A JSON patch `test` operation found a different value.
    #[error("test operation failed at {path}")]
    TestFailed { path: String },
    /// A document that has to be a JSON object is something else.
    #[error("{0} must be a JSON object")]
    NotAnObject(&'static str),
    /// The strategic merge patch is malformed (bad directive, missing merge key).
    #[error("strategic merge patch: {0}")]
    Strategic(String),
}
