//! Publishing: one confirm-mode channel for durable messages and dead letters, one
//! plain channel for transient messages, both shared by every concurrent send, on
//! the publishing connection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventing::{Envelope, Error, Result, Route};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use parking_lot::{Mutex, RwLock};
use tokio::sync::OnceCell;

use crate::error::{AmqpError, PROVIDER, broker, short};
use crate::headers;
use crate::link::Link;
use crate::topology::{self, DeadLetterQueue};

/// Sends messages for one provider.
pub(crate) struct Publisher {
    link: Link,
    confirmed: Lane,
    transient: Lane,
    /// Exchanges declared (or being declared) on the current channels, by address.
    exchanges: RwLock<HashMap<String, Arc<OnceCell<()>>>>,
    timeout: Duration,
}

/// Where a message goes.
struct Target {
    exchange: ShortString,
    routing_key: ShortString,
    /// Ask the broker to return it if no queue takes it.
    mandatory: bool,
}

impl Publisher {
    pub(crate) async fn new(link: Link, timeout: Duration) -> Result<Self> {
        let connection = link.get().await?;
        let confirmed = Lane::open(&connection, true).await?;
        let transient = Lane::open(&connection, false).await?;
        Ok(Self {
            link,
            confirmed,
            transient,
            exchanges: RwLock::new(HashMap::new()),
            timeout,
        })
    }

    /// Publishes to the event's fanout exchange. Durable messages are persistent and
    /// this returns once the broker confirmed them.
    pub(crate) async fn publish(&self, route: Route<'_>, envelope: &Envelope) -> Result<()> {
        let target = Target {
            exchange: short("exchange", route.address)?,
            routing_key: ShortString::default(),
            mandatory: false,
        };
        let properties = headers::to_properties(envelope, route.durable)?;
        let (lane, operation) = if route.durable {
            (
                &self.confirmed,
                "publishing a durable message (waiting for the broker's confirm)",
            )
        } else {
            (&self.transient, "publishing a message")
        };
        let exchange = Some((route.address, route.durable));
        let publish = self.send(lane, target, exchange, &envelope.body, properties);
        let confirmation = tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| Error::Timeout {
                operation,
                after: self.timeout,
            })?
            .map_err(|error| match error {
                Sent::Broker(error) => broker("publishing to exchange", route.address, error),
                Sent::Other(error) => error,
            })?;
        match confirmation {
            Confirmation::Nack(_) => Err(Error::Refused {
                provider: PROVIDER,
                address: route.address.to_string(),
                message_id: envelope.message_id().to_string(),
                reason: "the broker nacked the message (publisher confirm)".into(),
            }),
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        }
    }

    /// Stores `envelope` persistently in `dlq` through the default exchange and waits
    /// for the broker's confirm. A missing queue is declared once and the publish
    /// retried.
    pub(crate) async fn dead_letter(
        &self,
        dlq: &DeadLetterQueue,
        envelope: &Envelope,
    ) -> Result<()> {
        let properties = headers::to_properties(envelope, true)?;
        for attempt in 0..2 {
            let target = Target {
                exchange: ShortString::default(),
                routing_key: dlq.name.clone(),
                mandatory: true,
            };
            let properties = properties.clone();
            let sent = self.send(&self.confirmed, target, None, &envelope.body, properties);
            let confirmation = tokio::time::timeout(self.timeout, sent)
                .await
                .map_err(|_| Error::Timeout {
                    operation: "dead-lettering a message (waiting for the broker's confirm)",
                    after: self.timeout,
                })?
                .map_err(|error| match error {
                    Sent::Broker(error) => {
                        broker("dead-lettering to queue", dlq.name.as_str(), error)
                    }
                    Sent::Other(error) => error,
                })?;
            match confirmation {
                Confirmation::Nack(_) => {
                    return Err(Error::Refused {
                        provider: PROVIDER,
                        address: dlq.name.to_string(),
                        message_id: envelope.message_id().to_string(),
                        reason: "the broker nacked the dead letter (publisher confirm)".into(),
                    });
                }
                Confirmation::Ack(Some(_returned)) if attempt == 0 => {
                    tracing::warn!(dlq = %dlq.name, "dead-letter queue missing; declaring it again");
                    let connection = self.link.get().await?;
                    topology::declare_dead_letter_queue(&connection, dlq).await?;
                }
                Confirmation::Ack(Some(_returned)) => {
                    return Err(Error::provider(
                        PROVIDER,
                        AmqpError::Unroutable {
                            queue: dlq.name.to_string(),
                        },
                    ));
                }
                Confirmation::Ack(None) | Confirmation::NotRequested => return Ok(()),
            }
        }
        Ok(())
    }

    /// Publishes on `lane`, on a new channel (and connection) if the last one was
    /// lost, after declaring the event's exchange if `exchange` names one. A new
    /// channel also forgets which exchanges exist: the broker closes a channel that
    /// publishes to a deleted exchange, and declaring again is cheap.
    async fn send(
        &self,
        lane: &Lane,
        target: Target,
        exchange: Option<(&str, bool)>,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirmation, Sent> {
        let (channel, fresh) = lane.channel(&self.link).await.map_err(Sent::Other)?;
        if fresh {
            self.exchanges.write().clear();
        }
        if let Some((address, durable)) = exchange {
            self.ensure_exchange(address, durable)
                .await
                .map_err(Sent::Other)?;
        }
        lane.publish(&channel, target, payload, properties)
            .await
            .map_err(Sent::Broker)
    }

    /// Declares the fanout exchange of `address` once per channel, so a message sent
    /// before any listener exists is dropped by the broker (as AMQP does for an
    /// exchange without queues) instead of closing the channel with NOT_FOUND.
    async fn ensure_exchange(&self, address: &str, durable: bool) -> Result<()> {
        let cell = self.exchanges.read().get(address).cloned();
        let cell = match cell {
            Some(cell) if cell.initialized() => return Ok(()),
            Some(cell) => cell,
            None => Arc::clone(
                self.exchanges
                    .write()
                    .entry(address.to_string())
                    .or_default(),
            ),
        };
        cell.get_or_try_init(|| async {
            let connection = self.link.get().await?;
            topology::declare_exchange(&connection, address, durable).await
        })
        .await
        .map(|_| ())
    }

    /// Records that `declare` created the exchange of `address`.
    pub(crate) fn exchange_declared(&self, address: &str) {
        let mut exchanges = self.exchanges.write();
        let cell = exchanges.entry(address.to_string()).or_default();
        let _ = cell.set(());
    }

    /// Closes the publishing connection for good.
    pub(crate) async fn close(&self) {
        self.link.close().await;
    }
}

/// Why a send failed.
enum Sent {
    /// The broker or the channel failed.
    Broker(lapin::Error),
    /// No channel could be opened.
    Other(Error),
}

/// One publishing channel, opened again when the broker or the connection lost it.
struct Lane {
    channel: RwLock<Arc<Channel>>,
    confirms: bool,
    reopening: tokio::sync::Mutex<()>,
    /// lapin numbers a confirm-mode publish and queues its frames under two
    /// different locks; publishes racing between the two would be confirmed by each
    /// other's acks. Held only around the synchronous first poll of a publish.
    order: Mutex<()>,
}

impl Lane {
    async fn open(connection: &Connection, confirms: bool) -> Result<Self> {
        Ok(Self {
            channel: RwLock::new(Arc::new(open_channel(connection, confirms).await?)),
            confirms,
            reopening: tokio::sync::Mutex::new(()),
            order: Mutex::new(()),
        })
    }

    /// The channel, and whether it is a new one.
    async fn channel(&self, link: &Link) -> Result<(Arc<Channel>, bool)> {
        let channel = Arc::clone(&self.channel.read());
        if channel.status().connected() {
            return Ok((channel, false));
        }
        let _reopening = self.reopening.lock().await;
        let channel = Arc::clone(&self.channel.read());
        if channel.status().connected() {
            return Ok((channel, false));
        }
        let connection = link.get().await?;
        let fresh = Arc::new(open_channel(&connection, self.confirms).await?);
        tracing::info!("opened a new publishing channel");
        *self.channel.write() = Arc::clone(&fresh);
        Ok((fresh, true))
    }

    async fn publish(
        &self,
        channel: &Channel,
        target: Target,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<Confirmation> {
        let options = BasicPublishOptions {
            mandatory: target.mandatory,
            immediate: false,
        };
        let publish = channel.basic_publish(
            target.exchange,
            target.routing_key,
            options,
            payload,
            properties,
        );
        let confirm = if self.confirms {
            first_poll_locked(&self.order, publish).await?
        } else {
            publish.await?
        };
        confirm.await
    }
}

async fn open_channel(connection: &Connection, confirms: bool) -> Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| broker("opening", "publishing channel", e))?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker("enabling publisher confirms on", "publishing channel", e))?;
    }
    Ok(channel)
}

/// Polls `future` with `lock` held during its first poll only.
async fn first_poll_locked<F: Future>(lock: &Mutex<()>, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut first = true;
    std::future::poll_fn(|cx| {
        if std::mem::take(&mut first) {
            let _order = lock.lock();
            future.as_mut().poll(cx)
        } else {
            future.as_mut().poll(cx)
        }
    })
    .await
}
