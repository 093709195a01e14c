//! One listener call and its outcome: what the consume loop runs, pipelines wrap
//! ([`EnvelopePipeline::around`](crate::pipeline::EnvelopePipeline::around)) and
//! listeners produce. Below both `listener` and `pipeline`, so neither imports the other.

use futures_util::future::BoxFuture;

use crate::error::BoxError;

/// The result of one listener call, as a pipeline wrapping it sees it.
#[derive(Debug)]
pub struct Outcome {
    pub(crate) inner: Result<(), CallError>,
}

impl Outcome {
    /// True when the listener returned `Ok`.
    pub fn is_ok(&self) -> bool {
        self.inner.is_ok()
    }

    /// A short description of the failure, if any.
    pub fn error(&self) -> Option<String> {
        match &self.inner {
            Ok(()) => None,
            Err(CallError::Decode(reason)) => Some(format!("undecodable body: {reason}")),
            Err(CallError::Failed(error)) => Some(error.to_string()),
        }
    }
}

/// A listener call that a pipeline may wrap (for example to set a task-local).
pub type Call = BoxFuture<'static, Outcome>;

/// Why a call of a listener did not succeed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The body does not decode: retrying cannot help.
    Decode(String),
    /// The listener returned an error.
    Failed(BoxError),
}
