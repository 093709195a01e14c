//! The AsyncAPI document: generated from the registry, parsed back and checked.
#![cfg(feature = "asyncapi")]

use eventing::memory::MemoryProvider;
use eventing::{Context, EventListener, EventManager, ListenerResult, event, event_listener};
use serde::{Deserialize, Serialize};

/// An order.
#[event(name = "shop.{env}.OrderPlaced", durable = true, version = "1.1")]
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderPlaced {
    /// Order id.
    pub id: u64,
    /// Items.
    pub items: Vec<String>,
}

/// No schema derive: documented without a payload schema.
#[event(name = "shop.{env}.Ping")]
#[derive(Serialize, Deserialize)]
pub struct Ping;

/// Bills orders.
#[event_listener(OrderPlaced, name = "Billing")]
pub struct Billing;

/// Caches orders on every server.
#[event_listener(OrderPlaced, name = "Cache", per_process = true)]
pub struct Cache;

impl EventListener<OrderPlaced> for Billing {
    async fn on(&self, _: OrderPlaced, _: &Context) -> ListenerResult {
        Ok(())
    }
}

impl EventListener<OrderPlaced> for Cache {
    async fn on(&self, _: OrderPlaced, _: &Context) -> ListenerResult {
        Ok(())
    }
}

#[tokio::test]
async fn document_parses_back_with_channels_operations_and_schemas() {
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .server_name("web-1")
        .var("env", "prod")
        .build()
        .await
        .expect("build");
    let doc = eventing::asyncapi::document(&manager, "shop", "1.0.0").expect("document");
    let text = serde_json::to_string_pretty(&doc).expect("serialize");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("parses back");

    assert_eq!(doc["asyncapi"], "3.0.0");
    let channel = &doc["channels"]["shop.prod.OrderPlaced"];
    assert_eq!(channel["address"], "shop.prod.OrderPlaced");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["type"], "fanout");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["durable"], true);
    let queue = &doc["channels"]["shop.prod.OrderPlaced__Cache-web-1"];
    assert_eq!(queue["address"], "shop.prod.OrderPlaced::Cache-web-1");
    assert_eq!(queue["bindings"]["amqp"]["queue"]["exclusive"], true);

    let ops = doc["operations"].as_object().expect("operations");
    assert_eq!(ops["send.shop.prod.OrderPlaced"]["action"], "send");
    let receive = &ops["receive.shop.prod.OrderPlaced__Billing.Billing"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(
        receive["channel"]["$ref"],
        "#/channels/shop.prod.OrderPlaced__Billing"
    );

    let message = &doc["components"]["messages"]["OrderPlaced"];
    assert_eq!(message["contentType"], "application/json");
    assert_eq!(
        message["headers"]["properties"]["event-version"]["const"],
        "1.1.0"
    );
    let payload = &message["payload"];
    assert_eq!(payload["type"], "object");
    assert_eq!(payload["properties"]["id"]["type"], "integer");
    assert_eq!(payload["properties"]["items"]["type"], "array");
    assert!(
        doc["components"]["messages"]["Ping"]["payload"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("no schema"))
    );
    // Every $ref resolves inside the document.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r.strip_prefix('#').expect("local ref");
        let pointer = pointer.replace("~", "~0");
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {r}");
    }
}

fn collect_refs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
