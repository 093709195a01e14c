//! Declaring topology, once per provider.
//!
//! On RabbitMQ: what the STOMP plugin cannot declare (event exchanges, competing
//! queues and dead-letter queues), over AMQP 0-9-1 by [`RabbitAdmin`] as
//! RabbitMQ's rules say ([`eventing_rabbitmq::topology`], the AMQP provider's
//! too). Per-process queues are declared by their `SUBSCRIBE` (exclusive to its
//! session).
//!
//! On ActiveMQ: the consumer queue of every competing listener, over STOMP, so
//! the event's virtual topic copies every later send into it
//! ([`crate::activemq`]); per-process listeners subscribe to the topic itself.
//! Dead-letter queues come into being with their first letter.

use std::collections::HashSet;

use eventing::topology::QueueSpec;
use eventing_rabbitmq::topology as rules;
use parking_lot::Mutex;

use crate::admin::RabbitAdmin;
use crate::config::StompConfig;
use crate::connection::{Connection, Options};
use crate::dialect::Dialect;
use crate::error::StompError;
use crate::frame::{Command, Frame};
use crate::transport::Transport;

/// The short session that declares ActiveMQ consumer queues.
const DECLARER: Options = Options {
    role: "declarer",
    capacity: 16,
};

/// What one provider declared, and how to declare more.
pub(crate) struct Topology {
    config: StompConfig,
    transport: Transport,
    /// Exchanges declared by this provider.
    exchanges: Mutex<HashSet<String>>,
    /// Queues (and dead-letter queues) declared by this provider.
    queues: Mutex<HashSet<String>>,
}

impl Topology {
    pub(crate) fn new(config: &StompConfig, transport: &Transport) -> Topology {
        Topology {
            config: config.clone(),
            transport: transport.clone(),
            exchanges: Mutex::new(HashSet::new()),
            queues: Mutex::new(HashSet::new()),
        }
    }

    /// Whether this provider declares topology (RabbitMQ with `declare=amqp`).
    pub(crate) fn declares(&self) -> bool {
        self.config.dialect.needs_exchanges() && self.config.declare_topology
    }

    async fn admin(&self) -> Result<RabbitAdmin, StompError> {
        RabbitAdmin::open(&self.config, &self.transport).await
    }

    /// Declares the exchange of `address` once per provider (RabbitMQ).
    pub(crate) async fn ensure_exchange(
        &self,
        address: &str,
        durable: bool,
    ) -> Result<(), StompError> {
        if !self.declares() || self.exchanges.lock().contains(address) {
            return Ok(());
        }
        let exchange = rules::exchange(address, durable);
        let mut admin = self.admin().await?;
        let result = admin
            .declare_exchange(&exchange.name, exchange.durable)
            .await;
        admin.close().await;
        result?;
        self.exchanges.lock().insert(address.to_string());
        Ok(())
    }

    /// Declares the exchanges, the competing queues bound to them and the
    /// dead-letter queues of `queues` that this provider has not declared yet.
    pub(crate) async fn declare(&self, queues: &[QueueSpec]) -> Result<(), StompError> {
        if self.config.dialect == Dialect::ActiveMq {
            return self.declare_on_activemq(queues).await;
        }
        if !self.declares() {
            return Ok(());
        }
        let todo: Vec<&QueueSpec> = {
            let declared = self.queues.lock();
            let exchanges = self.exchanges.lock();
            queues
                .iter()
                .filter(|q| !declared.contains(&q.name) || !exchanges.contains(&q.event))
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let mut admin = self.admin().await?;
        let result = self.declare_with(&mut admin, &todo).await;
        admin.close().await;
        result
    }

    /// ActiveMQ: makes each competing queue's consumer queue exist (a
    /// `SUBSCRIBE` taking nothing, then `UNSUBSCRIBE`, both receipted).
    async fn declare_on_activemq(&self, queues: &[QueueSpec]) -> Result<(), StompError> {
        let todo: Vec<&QueueSpec> = {
            let declared = self.queues.lock();
            queues
                .iter()
                .filter(|q| !q.per_process && !declared.contains(&q.name))
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        let session = Connection::open(&self.config, &self.transport, DECLARER).await?;
        let wait = self.config.connect_timeout;
        let declared = async {
            for (n, queue) in todo.iter().enumerate() {
                let id = format!("declare-{n}");
                let Some(subscribe) = self.config.dialect.declare_frame(queue, &id) else {
                    continue;
                };
                session
                    .request(subscribe, wait, "SUBSCRIBE to declare a queue")
                    .await?;
                let unsubscribe = Frame::new(Command::Unsubscribe).header("id", id);
                session
                    .request(unsubscribe, wait, "UNSUBSCRIBE after declaring a queue")
                    .await?;
                tracing::debug!(event = %queue.event, queue = %queue.name, "declared");
                self.queues.lock().insert(queue.name.clone());
            }
            Ok::<_, StompError>(())
        }
        .await;
        session.close().await;
        declared
    }

    async fn declare_with(
        &self,
        admin: &mut RabbitAdmin,
        queues: &[&QueueSpec],
    ) -> Result<(), StompError> {
        let queue_type = self.config.queue_type;
        for queue in queues {
            if !self.exchanges.lock().contains(&queue.event) {
                let exchange = rules::exchange(&queue.event, queue.durable);
                admin
                    .declare_exchange(&exchange.name, exchange.durable)
                    .await?;
                self.exchanges.lock().insert(queue.event.clone());
            }
            if !queue.per_process {
                // As the AMQP provider does, and as its SUBSCRIBE will find it.
                admin.declare(&rules::queue(queue, queue_type)).await?;
                admin.bind_queue(&queue.name, &queue.event).await?;
            }
            let dlq = rules::dead_letter_queue(queue, queue_type);
            if !admin.queue_exists(&dlq.name).await? {
                admin.declare(&dlq).await?;
            }
            for &delay in &queue.retry_delays {
                admin.declare(&rules::delay_queue(queue, delay)).await?;
            }
            tracing::debug!(event = %queue.event, queue = %queue.name, "declared");
            self.queues.lock().insert(queue.name.clone());
        }
        Ok(())
    }

    /// Whether `queue` exists on the broker, and how many ready messages its
    /// dead-letter queue holds (`None`: it does not exist). Passive declarations.
    pub(crate) async fn check(&self, queue: &QueueSpec) -> Result<(bool, Option<u32>), StompError> {
        let mut admin = self.admin().await?;
        let checked = async {
            let exists = admin.queue_exists(&queue.name).await?;
            let depth = admin.queue_depth(&queue.dead_letter_queue()).await?;
            Ok::<_, StompError>((exists, depth))
        }
        .await;
        admin.close().await;
        checked
    }
}
