//! Envelope pipelines: interceptors on the sending and the receiving side.

use std::future::Future;

use crate::envelope::{Envelope, header};
use crate::error::BoxError;
use crate::event::EventDescriptor;
use crate::listener::ListenerDescriptor;

pub use crate::call::{Call, Outcome};

/// Interceptor around every send and every handled message.
///
/// On send, `send` runs for every pipeline in registration order after the standard
/// headers are set. On receive, `handle` runs in the same order before the listener
/// is called, and `around` wraps the call (the first pipeline outermost). An error
/// from `send` fails the send; an error from `handle` dead-letters the message with
/// the error as the reason.
///
/// ```
/// use eventing::{Envelope, EventDescriptor, ListenerDescriptor, BoxError};
/// use eventing::pipeline::EnvelopePipeline;
///
/// /// Stamps the sending service on every event and insists on it when receiving.
/// struct Origin(&'static str);
///
/// impl EnvelopePipeline for Origin {
///     fn send(&self, envelope: &mut Envelope, _: &EventDescriptor) -> Result<(), BoxError> {
///         envelope.headers.insert("origin", self.0);
///         Ok(())
///     }
///     fn handle(&self, envelope: &mut Envelope, _: &ListenerDescriptor) -> Result<(), BoxError> {
///         match envelope.headers.get("origin") {
///             Some(_) => Ok(()),
///             None => Err("missing origin header".into()),
///         }
///     }
/// }
/// ```
pub trait EnvelopePipeline: Send + Sync + 'static {
    /// A name for logs and errors.
    fn name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Called before a message leaves.
    fn send(&self, envelope: &mut Envelope, event: &EventDescriptor) -> Result<(), BoxError> {
        let _ = (envelope, event);
        Ok(())
    }

    /// Called before a listener sees a message.
    fn handle(
        &self,
        envelope: &mut Envelope,
        listener: &ListenerDescriptor,
    ) -> Result<(), BoxError> {
        let _ = (envelope, listener);
        Ok(())
    }

    /// Called once when the manager is built, with a handle the pipeline may use to
    /// send events of its own (held weakly, so it does not keep the manager alive).
    fn attached(&self, manager: crate::manager::WeakManager) {
        let _ = manager;
    }

    /// Wraps the listener call; the default returns `call` unchanged.
    fn around(&self, envelope: &Envelope, listener: &ListenerDescriptor, call: Call) -> Call {
        let _ = (envelope, listener);
        call
    }
}

tokio::task_local! {
    static SESSION: String;
}

/// The session of the current task: the id set by [`with_session`], or, inside a
/// listener, the one the event was sent with (via [`SessionPipeline`]).
pub fn current_session() -> Option<String> {
    SESSION.try_with(Clone::clone).ok()
}

/// Runs `future` with `session` as the current session.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let seen = eventing::pipeline::with_session("s-42", async { eventing::pipeline::current_session() }).await;
/// assert_eq!(seen.as_deref(), Some("s-42"));
/// assert_eq!(eventing::pipeline::current_session(), None);
/// # }
/// ```
pub async fn with_session<F: Future>(session: impl Into<String>, future: F) -> F::Output {
    SESSION.scope(session.into(), future).await
}

/// Carries the sending task's session id in the `session-id` header and makes it the
/// current session while the listener runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionPipeline;

impl EnvelopePipeline for SessionPipeline {
    fn name(&self) -> &'static str {
        "session"
    }

    fn send(&self, envelope: &mut Envelope, _: &EventDescriptor) -> Result<(), BoxError> {
        if let Some(session) = current_session() {
            envelope.headers.insert(header::SESSION_ID, session);
        }
        Ok(())
    }

    fn around(&self, envelope: &Envelope, _: &ListenerDescriptor, call: Call) -> Call {
        match envelope.headers.get(header::SESSION_ID) {
            Some(session) => Box::pin(SESSION.scope(session.to_string(), call)),
            None => call,
        }
    }
}
