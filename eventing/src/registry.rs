//! The compile-time registry filled by `#[event]` and `#[event_listener]`.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::event::{EventDescriptor, EventRegistration};
use crate::listener::ListenerDescriptor;

/// Every event registered in this binary, sorted by name.
pub fn events() -> Vec<&'static EventDescriptor> {
    let mut events: Vec<_> = inventory::iter::<EventRegistration>
        .into_iter()
        .map(|r| (r.descriptor)())
        .collect();
    events.sort_by_key(|e| (e.name(), e.type_name()));
    events
}

/// Every listener registered in this binary, sorted by event and listener name.
pub fn listeners() -> Vec<&'static ListenerDescriptor> {
    let mut listeners: Vec<_> = inventory::iter::<ListenerDescriptor>.into_iter().collect();
    listeners.sort_by_key(|l| (l.event().name(), l.name(), l.type_name()));
    listeners
}

/// Checks that no two event types share a name and no two listener types share a
/// name on one event.
pub fn validate() -> Result<()> {
    let mut by_name: HashMap<&str, &'static str> = HashMap::new();
    for event in events() {
        if let Some(first) = by_name.insert(event.name(), event.type_name()) {
            if first != event.type_name() {
                return Err(Error::DuplicateEvent {
                    name: event.name().to_string(),
                    first,
                    second: event.type_name(),
                });
            }
        }
    }
    let mut by_listener: HashMap<(&str, &str), &'static str> = HashMap::new();
    for listener in listeners() {
        let key = (listener.event().name(), listener.name());
        if let Some(first) = by_listener.insert(key, listener.type_name()) {
            if first != listener.type_name() {
                return Err(Error::DuplicateListener {
                    event: key.0.to_string(),
                    name: key.1.to_string(),
                    first,
                    second: listener.type_name(),
                });
            }
        }
    }
    Ok(())
}

/// Fills `{placeholders}` in an event name from `vars`.
pub(crate) fn resolve_name(name: &str, vars: &HashMap<String, String>) -> Result<String> {
    if !name.contains('{') {
        return Ok(name.to_string());
    }
    let mut out = String::with_capacity(name.len() + 16);
    let mut rest = name;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| Error::UnresolvedName {
            name: name.to_string(),
            placeholder: after.to_string(),
        })?;
        let key = &after[..close];
        let value = vars.get(key).ok_or_else(|| Error::UnresolvedName {
            name: name.to_string(),
            placeholder: key.to_string(),
        })?;
        out.push_str(value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_resolve() {
        let vars: HashMap<String, String> = [("env".to_string(), "prod".to_string())].into();
        assert_eq!(resolve_name("a.{env}.b", &vars).unwrap(), "a.prod.b");
        assert_eq!(resolve_name("plain", &vars).unwrap(), "plain");
        assert!(matches!(
            resolve_name("{region}", &vars),
            Err(Error::UnresolvedName { placeholder, .. }) if placeholder == "region"
        ));
        assert!(resolve_name("{env", &vars).is_err());
    }
}
