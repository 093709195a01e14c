//! Validation: every check on what `ast` and `attr` read, run before anything is
//! generated. Each failed check records a spanned error in the [`Ctxt`] and the
//! other checks still run.

use syn::LitStr;

use crate::ast::{Param, Shape, Target};
use crate::attr::{EventArgs, ListenerArgs};
use crate::ctxt::Ctxt;

/// The codecs `#[event(codec = "...")]` names.
pub(crate) const CODECS: &[&str] = &["json", "msgpack", "cbor"];

/// Checks `#[event(...)]` on `target`.
pub(crate) fn event(cx: &Ctxt, target: &Target, args: &EventArgs) {
    if let Some(name) = &args.name {
        check_name(cx, &name.value, "event");
    }
    if let Some(version) = &args.version {
        if normalize_version(&version.value.value()).is_none() {
            cx.error_spanned_by(
                &version.value,
                "`version` must be a semantic version such as \"1.2\" or \"1.2.3\"",
            );
        }
    }
    if let Some(codec) = &args.codec {
        let value = codec.value.value();
        if !CODECS.contains(&value.as_str()) {
            cx.error_spanned_by(
                &codec.value,
                format!(
                    "unknown codec `{value}`; valid codecs are \"json\", \"msgpack\", \"cbor\""
                ),
            );
        }
    }
    if let Shape::Union(token) = &target.shape {
        cx.error_spanned_by(
            token,
            "#[event] cannot go on a union: serde cannot serialize unions; use a struct or an enum",
        );
    }
    reject_generics(cx, target, "an event");
}

/// What a listener function is told about its parameters.
const FN_PARAMS: &str =
    "a listener function takes the event, then optionally `&Context` and `State<T>` (in any order)";

/// Checks `#[event_listener(...)]` on an `async fn`.
pub(crate) fn listener_fn(cx: &Ctxt, function: &syn::ItemFn, args: &ListenerArgs) {
    listener_args(cx, args);
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            "#[event_listener] on a function needs an `async fn`",
        );
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(
            &sig.generics,
            "a listener function cannot be generic: its name and registration are fixed at compile time",
        );
    }
    if let syn::ReturnType::Default = sig.output {
        cx.error_spanned_by(
            &sig.ident,
            "a listener function returns `ListenerResult` (`Ok(())` acknowledges the event)",
        );
    }
    let inputs = crate::ast::typed_inputs(function);
    if inputs.is_empty() {
        cx.error_spanned_by(&sig.ident, format!("{FN_PARAMS}; this one takes nothing"));
    }
    let (mut context, mut state) = (false, false);
    for (n, (input, typed)) in sig.inputs.iter().zip(&inputs).enumerate() {
        let Some((_, ty)) = typed else {
            cx.error_spanned_by(input, "a listener function takes no `self`");
            continue;
        };
        if n == 0 {
            continue;
        }
        match crate::ast::param(ty) {
            Param::Context { .. } if !context => context = true,
            Param::State(_) if !state => state = true,
            Param::Context { .. } => cx.error_spanned_by(ty, "`Context` is taken once"),
            Param::State(_) => cx.error_spanned_by(
                ty,
                "one `State<T>` per listener function: put what it needs in one type",
            ),
            Param::Other => cx.error_spanned_by(ty, FN_PARAMS),
        }
    }
}

/// Checks `#[event_listener(...)]` on `target`.
pub(crate) fn listener(cx: &Ctxt, target: &Target, args: &ListenerArgs) {
    listener_args(cx, args);
    match &target.shape {
        Shape::Struct { .. } => {}
        Shape::Enum(token) => cx.error_spanned_by(
            token,
            "#[event_listener] goes on a struct; bind state as struct fields",
        ),
        Shape::Union(token) => {
            cx.error_spanned_by(token, "#[event_listener] goes on a struct, not a union");
        }
    }
    reject_generics(cx, target, "a listener");
}

/// The checks of the arguments, whatever the item.
fn listener_args(cx: &Ctxt, args: &ListenerArgs) {
    if let Some(name) = &args.name {
        check_name(cx, &name.value, "listener");
    }
    if let (Some(per_process), Some(singleton)) = (&args.per_process, &args.singleton) {
        if per_process.value && singleton.value {
            cx.error_spanned_by(
                &singleton.key,
                "a listener is either `per_process` (every server gets every event) or `singleton` (one handler among all listeners), not both",
            );
        }
    }
    if let Some(version) = &args.version {
        if let Err(error) = semver::VersionReq::parse(&version.value.value()) {
            cx.error_spanned_by(
                &version.value,
                format!("`version` must be a semver range such as \"<2.0\" or \"^1.2\": {error}"),
            );
        }
    }
}

/// An event version as semver, where `1.2` means `1.2.0`; `None` if it is not one.
pub(crate) fn normalize_version(text: &str) -> Option<String> {
    let full = match text.split('.').count() {
        1 => format!("{text}.0.0"),
        2 => format!("{text}.0"),
        _ => text.to_string(),
    };
    semver::Version::parse(&full).ok().map(|v| v.to_string())
}

/// Names end up in addresses and queue names: not empty, no white space.
fn check_name(cx: &Ctxt, lit: &LitStr, what: &str) {
    let value = lit.value();
    if value.trim().is_empty() {
        cx.error_spanned_by(lit, format!("{what} name must not be empty"));
    } else if value.contains(char::is_whitespace) {
        cx.error_spanned_by(lit, format!("{what} name must not contain white space"));
    }
}

fn reject_generics(cx: &Ctxt, target: &Target, what: &str) {
    if !target.generics.params.is_empty() {
        cx.error_spanned_by(
            &target.generics,
            format!(
                "{what} cannot be generic: its name and registration are fixed at compile time"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_version;

    #[test]
    fn versions_are_completed_to_semver() {
        assert_eq!(normalize_version("1").as_deref(), Some("1.0.0"));
        assert_eq!(normalize_version("1.2").as_deref(), Some("1.2.0"));
        assert_eq!(
            normalize_version("1.2.3-rc.1").as_deref(),
            Some("1.2.3-rc.1")
        );
        assert_eq!(normalize_version("one"), None);
        assert_eq!(normalize_version(""), None);
    }
}
