//! MessagePack and CBOR bodies, per event and per manager; the receiver decodes by
//! `content-type`.
#![cfg(all(feature = "msgpack", feature = "cbor"))]

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use eventing::codec::Codec;
use eventing::memory::MemoryProvider;
use eventing::provider::Route;
use eventing::{
    Context, Envelope, Event, EventListener, EventManager, ListenerResult, event, event_listener,
    header,
};
use serde::{Deserialize, Serialize};

/// Always MessagePack.
#[event(name = "Packed", codec = "msgpack")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Packed {
    /// A number.
    pub n: u64,
    /// Some bytes-ish text.
    pub text: String,
}

/// Uses the manager's codec.
#[event(name = "Plain")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plain {
    /// A list.
    pub items: Vec<i32>,
}

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Records `(content-type, debug of the event)`.
#[event_listener(Packed, name = "Reader")]
#[event_listener(Plain, name = "Reader")]
pub struct Reader {
    seen: Seen,
}

impl EventListener<Packed> for Reader {
    async fn on(&self, event: Packed, ctx: &Context) -> ListenerResult {
        let ct = ctx.header(header::CONTENT_TYPE).unwrap_or("").to_string();
        self.seen
            .lock()
            .map_err(|_| "poisoned")?
            .push((ct, format!("{event:?}")));
        Ok(())
    }
}

impl EventListener<Plain> for Reader {
    async fn on(&self, event: Plain, ctx: &Context) -> ListenerResult {
        let ct = ctx.header(header::CONTENT_TYPE).unwrap_or("").to_string();
        self.seen
            .lock()
            .map_err(|_| "poisoned")?
            .push((ct, format!("{event:?}")));
        Ok(())
    }
}

#[tokio::test]
async fn bodies_travel_in_the_chosen_codec() {
    assert_eq!(Packed::descriptor().codec(), Some(Codec::MessagePack));
    assert_eq!(Plain::descriptor().codec(), None);
    let seen: Seen = Arc::default();
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .codec(Codec::Cbor)
        .only_bound_listeners()
        .listener(Reader {
            seen: Arc::clone(&seen),
        })
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    let packed = Packed {
        n: 42,
        text: "héllo".into(),
    };
    manager.send_event(&packed).await.expect("send");
    manager
        .send_event(&Plain { items: vec![1, -2] })
        .await
        .expect("send");
    // A JSON body still reads: the receiver goes by content-type.
    let json = Envelope::new(
        "Plain",
        eventing::codec::JSON,
        Bytes::from_static(b"{\"items\":[3]}"),
    );
    let route = Route::new("Plain", false);
    manager
        .provider()
        .publish(route, json)
        .await
        .expect("publish");
    // An unknown content type is dead-lettered with the reason.
    let xml = Envelope::new("Plain", "application/xml", Bytes::from_static(b"<items/>"));
    manager
        .provider()
        .publish(route, xml)
        .await
        .expect("publish");

    for _ in 0..200 {
        if seen.lock().expect("lock").len() == 3 && manager.stats().dead_lettered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = seen.lock().expect("lock").clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "application/cbor".to_string(),
                "Plain { items: [1, -2] }".to_string()
            ),
            (
                "application/json".to_string(),
                "Plain { items: [3] }".to_string()
            ),
            ("application/msgpack".to_string(), format!("{packed:?}")),
        ]
    );
    let letters = manager
        .dead_letters("Plain::Reader", 10)
        .await
        .expect("list");
    let reason = letters[0]
        .headers
        .get(header::DEAD_LETTER_REASON)
        .unwrap_or("");
    assert!(
        reason.contains("unsupported content type `application/xml`"),
        "{reason}"
    );
    manager.shutdown().await.expect("shutdown");
}
