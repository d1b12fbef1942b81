//! Parameter parsing shared by every RPC method: the one table of method
//! signatures (names and order of each method's parameters), strict
//! accessors, and the short excerpts error messages quote.
//!
//! Parameters are positional (a JSON array) or named (an object with the
//! names below). A call with more positional parameters than its method
//! takes, or a named parameter the method does not know, is refused with
//! `-32602` naming the method's parameters: a mistyped call must fail, not
//! silently do something else.

use serde_json::Value;

use super::RpcError;

/// Most characters of a caller's input quoted in an error message; a longer
/// input is cut there and marked with `…`.
pub const ECHO_CHARS: usize = 64;

/// Every method and its parameters, in positional order.
pub const SIGNATURES: &[(&str, &[&str])] = &[
    // Network and node (rpc/methods.rs).
    ("help", &[]),
    ("getnetworkinfo", &[]),
    ("getpeerinfo", &[]),
    ("getconnectioncount", &[]),
    ("addnode", &["node", "command"]),
    ("disconnectnode", &["node"]),
    ("listbanned", &[]),
    ("setban", &["subnet", "command", "bantime"]),
    ("clearbanned", &[]),
    ("getmiddleware", &[]),
    ("reloadconfig", &[]),
    ("uptime", &[]),
    ("getaddrmaninfo", &[]),
    ("getnodeaddresses", &["count"]),
    ("stop", &[]),
    // Chain and wallet (rpc/chain.rs).
    ("getbalance", &["address"]),
    ("getbalances", &["address"]),
    ("listunspent", &["minconf", "maxconf", "addresses", "limit"]),
    (
        "sendtoaddress",
        &["address", "amount", "subtract_fee", "nowait", "fee"],
    ),
    ("sendrawtransaction", &["hex"]),
    ("gettransaction", &["txid"]),
    ("getrawmempool", &["verbose"]),
    ("getmempoolinfo", &[]),
    ("getblockcount", &[]),
    ("getbestblockhash", &[]),
    ("getblock", &["block"]),
    ("getblockchaininfo", &[]),
    ("masternodelist", &["show_all"]),
    ("getblockhash", &["height"]),
    ("gettxoutsetinfo", &[]),
    ("getrawtransaction", &["txid", "verbose"]),
    ("decoderawtransaction", &["hex"]),
    ("validateaddress", &["address"]),
    ("getinfo", &[]),
    ("getconsensusinfo", &[]),
    ("gettreasurybalance", &[]),
    ("masternodestatus", &[]),
    ("masternodegenkey", &[]),
    ("listlockedcollaterals", &[]),
    ("listlockedutxos", &[]),
    ("unlockutxo", &["txid", "vout"]),
    ("cleanuplockedutxos", &[]),
    ("unlockorphanedutxos", &[]),
    ("forceunlockall", &[]),
    ("createrawtransaction", &["inputs", "outputs"]),
    ("signrawtransaction", &["hex"]),
    ("listtransactions", &["count"]),
    ("listreceivedbyaddress", &["minconf", "include_empty"]),
    ("getnewaddress", &[]),
    ("getwalletinfo", &[]),
    ("mergeutxos", &["min_count", "max_count", "address"]),
    ("reindex", &[]),
    ("reindextransactions", &[]),
];

/// The parameter names of `method`, if it is one.
pub fn signature(method: &str) -> Option<&'static [&'static str]> {
    SIGNATURES
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, params)| *params)
}

/// At most `max` characters of `text`, with `…` when it was longer.
pub fn excerpt_n(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// `text` quoted for an error message: at most [`ECHO_CHARS`] characters,
/// in double quotes with escapes.
pub fn quoted(text: &str) -> String {
    format!("{:?}", excerpt_n(text, ECHO_CHARS))
}

fn describe(method: &str, names: &[&str]) -> String {
    match names.len() {
        0 => format!("{method} takes no parameters"),
        1 => format!("{method} takes at most 1 parameter ({})", names[0]),
        n => format!(
            "{method} takes at most {n} parameters ({})",
            names.join(", ")
        ),
    }
}

/// Refuses more positional parameters than `method` takes, and named
/// parameters it does not know. Methods not in [`SIGNATURES`] pass (the
/// dispatcher answers "method not found").
pub fn check_arity(method: &str, params: &Value) -> Result<(), RpcError> {
    let Some(names) = signature(method) else {
        return Ok(());
    };
    match params {
        Value::Array(given) if given.len() > names.len() => Err(RpcError::params(format!(
            "{}, got {}",
            describe(method, names),
            given.len()
        ))),
        Value::Object(given) => match given.keys().find(|k| !names.contains(&k.as_str())) {
            Some(unknown) => Err(RpcError::params(format!(
                "{}; there is no parameter named {}",
                describe(method, names),
                quoted(unknown)
            ))),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Parameter `index` (positional) or `name` (named); JSON `null` counts as
/// absent.
pub(super) fn param<'a>(params: &'a Value, index: usize, name: &str) -> Option<&'a Value> {
    match params {
        Value::Array(a) => a.get(index),
        Value::Object(o) => o.get(name),
        _ => None,
    }
    .filter(|v| !v.is_null())
}

/// A required string parameter.
pub(super) fn string_param<'a>(
    params: &'a Value,
    index: usize,
    name: &str,
) -> Result<&'a str, RpcError> {
    optional_string_param(params, index, name)?
        .ok_or_else(|| RpcError::params(format!("missing parameter {index} ({name})")))
}

/// An optional string parameter: absent is `None`, any other JSON type is
/// an error (never taken as the default).
pub(super) fn optional_string_param<'a>(
    params: &'a Value,
    index: usize,
    name: &str,
) -> Result<Option<&'a str>, RpcError> {
    match param(params, index, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(RpcError::params(format!(
            "parameter {index} ({name}) must be a string, not {}",
            json_type(other)
        ))),
    }
}

/// Refuses any parameter.
pub(super) fn no_params(params: &Value) -> Result<(), RpcError> {
    let empty = match params {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    };
    if empty {
        Ok(())
    } else {
        Err(RpcError::params("this method takes no parameters"))
    }
}

/// The JSON type of `value`, for error messages.
pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_method_has_one_signature() {
        let mut names: Vec<&str> = super::super::methods::NAMES
            .iter()
            .chain(super::super::chain::NAMES)
            .copied()
            .collect();
        names.sort_unstable();
        let mut table: Vec<&str> = SIGNATURES.iter().map(|(n, _)| *n).collect();
        table.sort_unstable();
        assert_eq!(names, table);
    }

    #[test]
    fn too_many_positional_params_name_the_arity() {
        let e = check_arity("getblock", &json!([1, 2, 3])).unwrap_err();
        assert_eq!(e.code, super::super::codes::INVALID_PARAMS);
        assert!(
            e.message.contains("at most 1 parameter (block), got 3"),
            "{e}"
        );
        let e = check_arity("uptime", &json!([1])).unwrap_err();
        assert!(e.message.contains("uptime takes no parameters"), "{e}");
        let e = check_arity("setban", &json!(["1.2.3.4", "add", 60, true])).unwrap_err();
        assert!(e.message.contains("subnet, command, bantime"), "{e}");
        check_arity("setban", &json!(["1.2.3.4", "add", 60])).unwrap();
        check_arity("nosuchmethod", &json!([1, 2])).unwrap();
    }

    #[test]
    fn unknown_named_params_are_refused() {
        let e = check_arity("getblock", &json!({"blok": 1})).unwrap_err();
        assert!(e.message.contains("\"blok\""), "{e}");
        check_arity("getblock", &json!({"block": 1})).unwrap();
    }

    #[test]
    fn excerpts_are_short() {
        let long = "x".repeat(600_000);
        let q = quoted(&long);
        assert!(q.chars().count() <= ECHO_CHARS + 3, "{}", q.len());
        assert!(q.ends_with("…\""));
        assert_eq!(quoted("add"), "\"add\"");
        assert_eq!(excerpt_n("ééé", 2), "éé…");
    }

    #[test]
    fn a_non_string_is_not_a_string() {
        let e = optional_string_param(&json!(["a", 5]), 1, "command").unwrap_err();
        assert!(e.message.contains("must be a string, not a number"), "{e}");
        assert_eq!(
            optional_string_param(&json!(["a"]), 1, "command").unwrap(),
            None
        );
    }
}
