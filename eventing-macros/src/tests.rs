//! The stages run on token streams, outside the compiler: which errors come out,
//! and what is emitted beside them. What compiles is tested in `eventing-macros/tests/ui`.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Item;
use crate::expand;

fn item(tokens: TokenStream) -> Item {
    syn::parse2(tokens).expect("any tokens are an item")
}

fn event(args: TokenStream, tokens: TokenStream) -> String {
    expand::event(args, &item(tokens)).to_string()
}

fn listener(args: TokenStream, tokens: TokenStream) -> String {
    expand::event_listener(args, &item(tokens)).to_string()
}

/// The messages of the `compile_error!`s in `output`, in order.
fn errors(output: &str) -> Vec<String> {
    output
        .split("compile_error ! {")
        .skip(1)
        .filter_map(|rest| {
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find("\" }")?;
            Some(rest[start..end].replace("\\\"", "\"").replace("\\\\", "\\"))
        })
        .collect()
}

#[test]
fn event_with_every_option_is_implemented_and_registered() {
    let out = event(
        quote!(
            name = "a.{env}.B",
            durable = true,
            version = "1.2",
            codec = "cbor",
            crate = "::eventing"
        ),
        quote!(
            struct B;
        ),
    );
    assert!(errors(&out).is_empty(), "{out}");
    assert!(out.contains("inventory :: submit"), "{out}");
    assert!(out.contains("\"a.{env}.B\""), "{out}");
    assert!(out.contains("Some (\"1.2.0\")"), "{out}");
    assert!(out.contains("Some (\"cbor\")"), "{out}");
    assert!(out.contains("true"), "{out}");
}

#[test]
fn event_errors_come_together_with_a_stand_in_impl() {
    let out = event(
        quote!(
            durable = "yes",
            bogus = 1,
            name = "",
            version = "one",
            codec = "xml"
        ),
        quote!(
            struct S;
        ),
    );
    assert_eq!(
        errors(&out),
        [
            "`durable` must be `true` or `false`",
            "unknown key `bogus`; valid keys are `name`, `durable`, `version`, `codec`, `crate`",
            "event name must not be empty",
            "`version` must be a semantic version such as \"1.2\" or \"1.2.3\"",
            "unknown codec `xml`; valid codecs are \"json\", \"msgpack\", \"cbor\"",
        ]
    );
    assert!(out.starts_with("struct S ;"), "{out}");
    assert!(out.contains(":: eventing :: Event for S"), "{out}");
    assert!(
        out.contains("for < '__stand_in > S : :: eventing :: __private :: SerdeEvent"),
        "{out}"
    );
    assert!(!out.contains("inventory"), "{out}");
}

#[test]
fn event_stand_in_uses_the_crate_path_given() {
    let out = event(
        quote!(crate = "crate::rt", nme = "x"),
        quote!(
            struct S;
        ),
    );
    assert_eq!(errors(&out).len(), 1, "{out}");
    assert!(out.contains("crate :: rt :: Event for S"), "{out}");
}

#[test]
fn event_without_a_usable_crate_path_gets_no_stand_in() {
    let out = event(
        quote!(crate = "not a path"),
        quote!(
            struct S;
        ),
    );
    assert_eq!(
        errors(&out),
        ["`crate` must be a path such as \"::eventing\""]
    );
    assert!(!out.contains("Event for"), "{out}");
}

#[test]
fn event_stand_in_keeps_generics_and_where_clauses() {
    let out = event(
        quote!(),
        quote!(
            struct G<T>
            where
                T: Clone,
            {
                t: T,
            }
        ),
    );
    assert_eq!(
        errors(&out),
        ["an event cannot be generic: its name and registration are fixed at compile time"]
    );
    assert!(
        out.contains("impl < T > :: eventing :: Event for G < T > where T : Clone , for < '__stand_in > G < T > :"),
        "{out}"
    );
}

#[test]
fn event_on_a_function_keeps_it_and_reports_every_error() {
    let out = event(
        quote!(bogus = 1),
        quote!(
            fn f() {}
        ),
    );
    assert_eq!(
        errors(&out),
        [
            "unknown key `bogus`; valid keys are `name`, `durable`, `version`, `codec`, `crate`",
            "#[event] goes on a struct or an enum that derives serde's Serialize and Deserialize",
        ]
    );
    assert!(out.starts_with("fn f () { }"), "{out}");
    assert!(!out.contains("impl"), "{out}");
}

#[test]
fn malformed_settings_are_skipped_and_the_rest_still_read() {
    let out = event(
        quote!(durable, name = "a" "b", version(1), durable = false, durable = true),
        quote!(
            struct S;
        ),
    );
    assert_eq!(
        errors(&out),
        [
            "`durable` needs a value: `durable = ...`",
            "expected `,`",
            "`version` needs a value: `version = ...`",
            "duplicate key `durable`: give it once",
        ],
    );
}

#[test]
fn listener_with_every_option_is_registered() {
    let out = listener(
        quote!(
            E,
            name = "L",
            per_process = true,
            singleton = false,
            version = "<2.0",
            crate = "::eventing"
        ),
        quote!(
            struct L;
        ),
    );
    assert!(errors(&out).is_empty(), "{out}");
    assert!(out.contains("inventory :: submit"), "{out}");
    assert!(out.contains("Some (\"<2.0\")"), "{out}");
    assert!(out.contains("Arc :: new (L)"), "{out}");
}

#[test]
fn listener_errors_come_together_without_registration() {
    let out = listener(
        quote!(
            E,
            per_proces = true,
            name = "a b",
            per_process = true,
            singleton = true,
            version = "y"
        ),
        quote!(
            enum L {}
        ),
    );
    assert_eq!(
        errors(&out),
        [
            "unknown key `per_proces`; valid keys are `name`, `per_process`, `singleton`, `version`, `crate`",
            "listener name must not contain white space",
            "a listener is either `per_process` (every server gets every event) or `singleton` (one handler among all listeners), not both",
            "`version` must be a semver range such as \"<2.0\" or \"^1.2\": unexpected character 'y' while parsing major version number",
            "#[event_listener] goes on a struct; bind state as struct fields",
        ]
    );
    assert!(out.starts_with("enum L { }"), "{out}");
    assert!(!out.contains("inventory"), "{out}");
}

#[test]
fn listener_without_event_type_still_checks_its_settings() {
    for args in [quote!(), quote!(name = "x", bogus = 1)] {
        let out = listener(
            args.clone(),
            quote!(
                struct L;
            ),
        );
        let found = errors(&out);
        assert_eq!(
            found[0],
            "missing event type: write #[event_listener(MyEvent)] with the event this listener handles",
            "{args}"
        );
        assert_eq!(found.len(), if args.is_empty() { 1 } else { 2 }, "{out}");
        assert!(!out.contains("inventory"), "{out}");
    }
}

#[test]
fn listener_function_is_kept_and_registered_with_its_state() {
    let out = listener(
        quote!(E, name = "billing", per_process = true),
        quote!(
            async fn bill(e: E, ctx: &Context, State(db): State<Db>) -> ListenerResult {
                Ok(())
            }
        ),
    );
    assert!(errors(&out).is_empty(), "{out}");
    assert!(out.starts_with("async fn bill"), "{out}");
    assert!(out.contains("__new_fn"), "{out}");
    assert!(out.contains("\"billing\""), "{out}");
    assert!(
        out.contains("struct __Listener (:: eventing :: State < Db >)"),
        "{out}"
    );
    assert!(
        out.contains("bill (event , ctx , :: core :: clone :: Clone :: clone (& self . 0))"),
        "{out}"
    );
}

#[test]
fn listener_function_errors_come_together_without_registration() {
    let out = listener(
        quote!(E, singleton = true, per_process = true),
        quote!(
            fn f<T>(e: E, n: u32) {}
        ),
    );
    assert_eq!(
        errors(&out),
        [
            "a listener is either `per_process` (every server gets every event) or `singleton` (one handler among all listeners), not both",
            "#[event_listener] on a function needs an `async fn`",
            "a listener function cannot be generic: its name and registration are fixed at compile time",
            "a listener function returns `ListenerResult` (`Ok(())` acknowledges the event)",
            "a listener function takes the event, then optionally `&Context` and `State<T>` (in any order)",
        ]
    );
    assert!(out.starts_with("fn f"), "{out}");
    assert!(!out.contains("inventory"), "{out}");
}
