//! AsyncAPI 3.0 documents from the registry: one channel per event address (with
//! the AMQP fanout exchange binding), one per queue (with its queue binding), a
//! `send` operation per event and a `receive` operation per listener, and message
//! payloads as JSON Schema when the event derives `schemars::JsonSchema` and the
//! `asyncapi` feature is on.

use serde_json::{Map, Value, json};

use crate::error::Result;
use crate::manager::EventManager;
use crate::registry;
use crate::topology::SINGLETON;

/// A component key AsyncAPI accepts (`^[A-Za-z0-9_.-]+$`).
fn key(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The document for what `manager` sends (every registered event) and receives
/// (its listeners), titled `title` at `version`.
pub fn document(manager: &EventManager, title: &str, version: &str) -> Result<Value> {
    let topology = manager.topology()?;
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for event in registry::events() {
        let address = manager.address_of(event)?.to_string();
        let id = key(&address);
        let message = key(event
            .type_name()
            .rsplit("::")
            .next()
            .unwrap_or(event.type_name()));
        let mut headers = json!({
            "type": "object",
            "properties": {
                "message-id": {"type": "string"},
                "event": {"type": "string", "const": address},
                "timestamp": {"type": "string", "format": "date-time"},
                "content-type": {"type": "string"},
            },
            "required": ["message-id", "event", "timestamp", "content-type"],
        });
        if let Some(v) = event.version() {
            headers["properties"]["event-version"] = json!({"type": "string", "const": v});
        }
        let content_type = event.codec().unwrap_or_default().content_type();
        let payload = event
            .payload_schema()
            .unwrap_or_else(|| json!({"description": format!("{} (no schema: derive schemars::JsonSchema)", event.type_name())}));
        messages.insert(
            message.clone(),
            json!({
                "name": message,
                "title": event.type_name(),
                "contentType": content_type,
                "headers": headers,
                "payload": payload,
            }),
        );
        channels.insert(
            id.clone(),
            json!({
                "address": address,
                "messages": {message.clone(): {"$ref": format!("#/components/messages/{message}")}},
                "bindings": {"amqp": {
                    "is": "routingKey",
                    "exchange": {"name": address, "type": "fanout", "durable": event.durable(), "autoDelete": false, "vhost": "/"},
                    "bindingVersion": "0.3.0",
                }},
            }),
        );
        operations.insert(
            format!("send.{id}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{id}")},
                "messages": [{"$ref": format!("#/channels/{id}/messages/{message}")}],
            }),
        );
        for queue in topology.queues.iter().filter(|q| q.event == address) {
            let queue_id = key(&queue.name);
            channels.insert(
                queue_id.clone(),
                json!({
                    "address": queue.name,
                    "messages": {message.clone(): {"$ref": format!("#/components/messages/{message}")}},
                    "bindings": {"amqp": {
                        "is": "queue",
                        "queue": {
                            "name": queue.name,
                            "durable": queue.durable,
                            "exclusive": queue.per_process,
                            "autoDelete": queue.per_process,
                            "vhost": "/",
                        },
                        "bindingVersion": "0.3.0",
                    }},
                }),
            );
            let kind = if queue.per_process {
                "broadcast"
            } else if queue.name.ends_with(&format!("::{SINGLETON}")) {
                "singleton"
            } else {
                "competing"
            };
            operations.insert(
                format!("receive.{queue_id}.{}", key(queue.listener)),
                json!({
                    "action": "receive",
                    "channel": {"$ref": format!("#/channels/{queue_id}")},
                    "messages": [{"$ref": format!("#/channels/{queue_id}/messages/{message}")}],
                    "summary": format!("listener {} ({kind}), dead letters in {}", queue.listener, queue.dead_letter_queue()),
                }),
            );
        }
    }
    Ok(json!({
        "asyncapi": "3.0.0",
        "info": {"title": title, "version": version, "description": format!("server {}", topology.server)},
        "defaultContentType": crate::codec::JSON,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }))
}
