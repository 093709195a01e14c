//! Dead letters: listing them (a browsing subscription that leaves them in
//! place) and how many there are. Taking them for a replay is a consumer of the
//! dead-letter queue ([`StompConsumer::take_dead_letters`](crate::consumer::StompConsumer::take_dead_letters)).

use std::time::Duration;

use eventing::topology::QueueSpec;
use eventing::{Envelope, Error};
use tokio::time::Instant;

use crate::connection::{Inbound, Options};
use crate::dialect::Dialect;
use crate::error::StompError;
use crate::shared::Shared;
use crate::topology::Topology;

/// A short-lived session that reads dead letters.
const DEAD_LETTER_READER: Options = Options {
    role: "dead-letter reader",
    capacity: 16,
};

/// How long a listing waits for one more message before it stops reading.
const BROWSE_IDLE: Duration = Duration::from_millis(300);

/// Up to `limit` dead letters of `queue`, oldest first, left in place. One this
/// client cannot read whole says why ([`UNREADABLE`](crate::consumer::UNREADABLE));
/// on RabbitMQ one the broker dead-lettered gets the usual reason header.
pub(crate) async fn list(
    shared: &Shared,
    queue: &QueueSpec,
    limit: usize,
) -> eventing::Result<Vec<Envelope>> {
    let letters = browse(shared, queue, limit).await?;
    let dialect = shared.dialect();
    Ok(letters
        .into_iter()
        .map(|letter| {
            let mut letter = match letter {
                Inbound::Message(frame) => dialect.envelope_of(frame),
                Inbound::Rejected(rejected) => {
                    crate::consumer::unreadable_letter(dialect, rejected)
                }
            };
            if dialect == Dialect::RabbitMq {
                // Dead-lettered by the broker (past a quorum queue's delivery limit).
                eventing_rabbitmq::explain_dead_letter(&mut letter);
            }
            letter
        })
        .collect())
}

/// How many letters `queue`'s dead-letter queue holds; an error if `queue`
/// does not exist.
///
/// On RabbitMQ with `declare=amqp` the queue is declared as `declare` does
/// (competing queues), then both are checked with passive declarations over
/// AMQP: RabbitMQ confirms a message sent to a queue that does not exist (and
/// drops it), so a replay must not start then. Otherwise (`declare=none`,
/// Artemis) the letters are counted by browsing them, up to 65535, and the
/// queue's existence cannot be checked. On ActiveMQ a browse ends at the
/// broker's `browser:end` marker.
pub(crate) async fn depth(
    shared: &Shared,
    topology: &Topology,
    queue: &QueueSpec,
) -> eventing::Result<usize> {
    if !topology.declares() {
        return Ok(browse(shared, queue, usize::MAX).await?.len());
    }
    topology.declare(std::slice::from_ref(queue)).await?;
    let (exists, depth) = topology.check(queue).await?;
    if !exists {
        return Err(Error::QueueNotFound {
            queue: queue.name.clone(),
        });
    }
    Ok(depth.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)))
}

/// Up to `limit` messages of `queue`'s dead-letter queue, oldest first, read on
/// a session of their own and left in place: unacknowledged, they return to the
/// queue in their order when the session closes.
async fn browse(
    shared: &Shared,
    queue: &QueueSpec,
    limit: usize,
) -> eventing::Result<Vec<Inbound>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = limit.min(usize::from(u16::MAX));
    let session = shared.session(DEAD_LETTER_READER).await?;
    let id = "dead-letters";
    let mut rx = session.subscription(id, limit + 16);
    let frame = shared.dialect().dead_letter_browse_frame(
        queue,
        id,
        u16::try_from(limit).unwrap_or(u16::MAX),
    );
    let letters = match session
        .request(frame, shared.send_timeout, "SUBSCRIBE to dead letters")
        .await
    {
        Ok(()) => {
            let mut letters = Vec::new();
            let deadline = Instant::now() + shared.send_timeout;
            while letters.len() < limit {
                let idle = BROWSE_IDLE.min(deadline.saturating_duration_since(Instant::now()));
                match tokio::time::timeout(idle, rx.recv()).await {
                    // ActiveMQ ends a browse with an empty `browser:end` message.
                    Ok(Some(Inbound::Message(frame))) if frame.get("browser") == Some("end") => {
                        break;
                    }
                    Ok(Some(letter)) => letters.push(letter),
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(letters)
        }
        // No dead-letter queue yet: no dead letters.
        Err(StompError::Broker(error)) if error.message == "not_found" => Ok(Vec::new()),
        Err(error) => Err(error.into()),
    };
    session.close().await;
    letters
}
