//! The URL parameters of RabbitMQ's queue type, shared by `amqp://` and
//! `stomp://` URLs:
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `queue_type` | `classic` | `quorum`: competing queues and their `.dlq` are quorum queues (replicated on a cluster); per-process queues stay classic (they are exclusive) |
//! | `delivery_limit` | `20` | with `queue_type=quorum`: `x-delivery-limit`; the broker dead-letters a message to `<queue>.dlq` after this many deliveries without an acknowledgement |

/// The `x-delivery-limit` of quorum queues when the URL sets no `delivery_limit`:
/// the broker dead-letters a message it delivered this many times without an
/// acknowledgement (RabbitMQ 4's own default).
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// What kind of queue competing listeners get (the URL's `queue_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// Classic queues (the default).
    #[default]
    Classic,
    /// Quorum queues: replicated, with a delivery limit whose overflow the broker
    /// dead-letters to `<queue>.dlq`.
    Quorum {
        /// `x-delivery-limit`: deliveries without an acknowledgement before the
        /// broker dead-letters the message.
        delivery_limit: u32,
    },
}

impl QueueType {
    /// The delivery limit if a queue that is `per_process` or not is a quorum
    /// queue: per-process queues are exclusive, which quorum queues cannot be, so
    /// they (and their dead-letter queues) stay classic.
    pub fn quorum_for(self, per_process: bool) -> Option<u32> {
        match self {
            QueueType::Quorum { delivery_limit } if !per_process => Some(delivery_limit),
            _ => None,
        }
    }
}

/// Reads `queue_type` and `delivery_limit` among a URL's parameters: offer each
/// parameter to [`accept`](Self::accept), then [`finish`](Self::finish).
///
/// ```
/// use eventing_rabbitmq::{QueueType, QueueTypeParams};
///
/// let mut params = QueueTypeParams::default();
/// assert_eq!(params.accept("queue_type", "quorum"), Ok(true));
/// assert_eq!(params.accept("delivery_limit", "5"), Ok(true));
/// assert_eq!(params.accept("heartbeat", "10"), Ok(false), "not one of these");
/// assert_eq!(params.finish(), Ok(QueueType::Quorum { delivery_limit: 5 }));
///
/// let mut classic = QueueTypeParams::default();
/// classic.accept("delivery_limit", "5").unwrap();
/// assert!(classic.finish().unwrap_err().contains("needs `queue_type=quorum`"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct QueueTypeParams {
    queue_type: Option<bool>,
    delivery_limit: Option<u32>,
}

impl QueueTypeParams {
    /// The names of these parameters, for a URL's list of known ones.
    pub const NAMES: [&'static str; 2] = ["queue_type", "delivery_limit"];

    /// Takes the parameter `name` with `value` (already percent-decoded) if it is
    /// one of these: `Ok(true)`; `Ok(false)` if it is not; an error naming the
    /// parameter if its value is bad or it was given before.
    pub fn accept(&mut self, name: &str, value: &str) -> Result<bool, String> {
        match name {
            "queue_type" => {
                if self.queue_type.is_some() {
                    return Err("`queue_type` is given more than once".into());
                }
                self.queue_type = Some(match value {
                    "classic" => false,
                    "quorum" => true,
                    _ => {
                        return Err(format!(
                            "`queue_type` must be `classic` or `quorum`, not `{value}`"
                        ));
                    }
                });
            }
            "delivery_limit" => {
                if self.delivery_limit.is_some() {
                    return Err("`delivery_limit` is given more than once".into());
                }
                let limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=i32::MAX as u32).contains(limit))
                    .ok_or_else(|| {
                        format!(
                            "`delivery_limit` must be a whole number from 1 to {}, not `{value}`",
                            i32::MAX
                        )
                    })?;
                self.delivery_limit = Some(limit);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The queue type the parameters ask for; an error if `delivery_limit` is
    /// given without `queue_type=quorum`.
    pub fn finish(self) -> Result<QueueType, String> {
        match (self.queue_type.unwrap_or(false), self.delivery_limit) {
            (true, limit) => Ok(QueueType::Quorum {
                delivery_limit: limit.unwrap_or(DEFAULT_DELIVERY_LIMIT),
            }),
            (false, None) => Ok(QueueType::Classic),
            (false, Some(_)) => Err(
                "`delivery_limit` needs `queue_type=quorum` (classic queues have no delivery limit)"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<QueueType, String> {
        let mut params = QueueTypeParams::default();
        for (name, value) in pairs {
            assert!(params.accept(name, value)?, "{name} is one of these");
        }
        params.finish()
    }

    #[test]
    fn queue_type_and_delivery_limit() {
        assert_eq!(parse(&[]), Ok(QueueType::Classic));
        assert_eq!(parse(&[("queue_type", "classic")]), Ok(QueueType::Classic));
        assert_eq!(
            parse(&[("queue_type", "quorum")]),
            Ok(QueueType::Quorum {
                delivery_limit: DEFAULT_DELIVERY_LIMIT
            })
        );
        assert_eq!(
            parse(&[("delivery_limit", "3"), ("queue_type", "quorum")]),
            Ok(QueueType::Quorum { delivery_limit: 3 })
        );
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (pairs, expected) in [
            (&[("queue_type", "stream")][..], "`queue_type` must be"),
            (&[("queue_type", "")][..], "`queue_type` must be"),
            (&[("delivery_limit", "0")][..], "`delivery_limit` must be"),
            (&[("delivery_limit", "-1")][..], "`delivery_limit` must be"),
            (
                &[("delivery_limit", "lots")][..],
                "`delivery_limit` must be",
            ),
            (
                &[("delivery_limit", "4294967295")][..],
                "`delivery_limit` must be",
            ),
            (&[("delivery_limit", "5")][..], "needs `queue_type=quorum`"),
            (
                &[("queue_type", "quorum"), ("queue_type", "classic")][..],
                "more than once",
            ),
            (
                &[
                    ("queue_type", "quorum"),
                    ("delivery_limit", "1"),
                    ("delivery_limit", "2"),
                ][..],
                "more than once",
            ),
        ] {
            let error = parse(pairs).expect_err(expected);
            assert!(error.contains(expected), "{pairs:?}: {error}");
        }
        let mut params = QueueTypeParams::default();
        assert_eq!(params.accept("queue-type", "quorum"), Ok(false));
    }

    #[test]
    fn per_process_queues_stay_classic() {
        let quorum = QueueType::Quorum { delivery_limit: 4 };
        assert_eq!(quorum.quorum_for(false), Some(4));
        assert_eq!(quorum.quorum_for(true), None);
        assert_eq!(QueueType::Classic.quorum_for(false), None);
    }
}
