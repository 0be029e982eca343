//! Preferences merged under server policy (contract sections 7.2 and 12).
//!
//! A user's effective preferences are three layers deep-merged in order of precedence:
//! the config's `notificationDefaults` (under the key `notifications`), then the user's own
//! saved object, then `policy.enforced`, which always wins. Clients are told which of the
//! values they submitted were replaced by policy (`overridden`), so a settings screen can
//! show a value as locked instead of silently ignoring the user's choice.
//!
//! Merge rules: two objects merge key by key; any other pair (object over scalar, array
//! over array, `null` over anything) is replaced wholesale by the upper layer. `null` is an
//! ordinary value here, not a deletion as in RFC 7396 merge patch: the contract says "any
//! other value replaced".
//!
//! `overridden` decisions (the contract is silent on these):
//! - A path is listed when the user's value there differs from the value it ends up with
//!   after `enforced` is applied. When the user and the policy hold the same value nothing
//!   was replaced in effect, so the path is not listed. Numbers compare by value
//!   (`1` equals `1.0`), as JSON (and JCS) treat them.
//! - When `enforced` replaces a whole user subtree with a non-object (or a user scalar with
//!   an object), the path of that subtree is listed, not each leaf inside it.
//! - Paths join object keys with `.`. A key that itself contains `.` or `\` has those
//!   characters escaped with a backslash (`a.b` → `a\.b`, `a\b` → `a\\b`), so every path
//!   splits back into its keys unambiguously. Arrays are values, never descended into.
//! - The list is sorted (byte order of the escaped paths) and has no duplicates.
//!
//! A top-level user document or `enforced` that is not an object cannot be merged key by
//! key; it is ignored (treated as `{}`) rather than allowed to replace the whole document.
//! [`validate_preferences`] keeps such input out of the POST path in the first place.

use serde_json::{Map, Value};

/// Deepest nesting accepted in a submitted preferences object (the top-level object is 1).
pub const MAX_DEPTH: usize = 4;

/// Largest accepted request body for `POST /user/preferences`, in bytes.
pub const MAX_BYTES: usize = 16 * 1024;

/// The answer of `GET`/`POST /user/preferences`.
#[derive(Clone, Debug, PartialEq)]
pub struct Merged {
    /// Defaults, overlaid by the user's object, overlaid by the enforced policy.
    pub preferences: Value,
    /// Dotted paths where the user's value was replaced by policy; sorted, no duplicates.
    pub overridden: Vec<String>,
}

/// Why a submitted preferences document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreferenceError {
    /// The request body is over [`MAX_BYTES`]: answered 413 `payload_too_large`.
    #[error("preferences body is {len} bytes; at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    /// The document is not a JSON object: answered 400 `invalid_request`.
    #[error("preferences must be a JSON object")]
    NotAnObject,
    /// The document nests deeper than [`MAX_DEPTH`]: answered 400 `invalid_request`.
    #[error("preferences nest deeper than {max} levels")]
    TooDeep { max: usize },
}

/// Nesting depth of `value`: a scalar is 0, and every object or array adds one level, so a
/// flat top-level object is 1 and `{"a": [1]}` is 2.
///
/// Walks with an explicit stack, so a pathologically deep value cannot overflow the call
/// stack here.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((node, above)) = stack.pop() {
        let level = above + 1;
        match node {
            Value::Object(map) => stack.extend(map.values().map(|child| (child, level))),
            Value::Array(items) => stack.extend(items.iter().map(|child| (child, level))),
            _ => continue,
        }
        deepest = deepest.max(level);
    }
    deepest
}

/// Checks a submitted preferences document: body size first (as the contract requires, so
/// an oversized body is refused without looking at it), then shape, then depth.
pub fn validate_preferences(raw_body_len: usize, value: &Value) -> Result<(), PreferenceError> {
    if raw_body_len > MAX_BYTES {
        return Err(PreferenceError::TooLarge {
            len: raw_body_len,
            max: MAX_BYTES,
        });
    }
    if !value.is_object() {
        return Err(PreferenceError::NotAnObject);
    }
    if depth(value) > MAX_DEPTH {
        return Err(PreferenceError::TooDeep { max: MAX_DEPTH });
    }
    Ok(())
}

/// Effective preferences and the paths where policy replaced the user's values.
///
/// `notification_defaults` is placed under `notifications` as it is (any JSON value);
/// `user` and `enforced` are overlaid only when they are objects (see the module docs).
pub fn effective_preferences(
    notification_defaults: &Value,
    user: &Value,
    enforced: Option<&Value>,
) -> Merged {
    let empty = Map::new();
    let user = user.as_object().unwrap_or(&empty);
    let enforced = enforced.and_then(Value::as_object).unwrap_or(&empty);

    let mut preferences = Map::new();
    preferences.insert("notifications".to_owned(), notification_defaults.clone());
    merge_into(&mut preferences, user);
    merge_into(&mut preferences, enforced);

    let mut overridden = Vec::new();
    collect_overridden(user, enforced, "", &mut overridden);
    overridden.sort();
    overridden.dedup();

    Merged {
        preferences: Value::Object(preferences),
        overridden,
    }
}

/// Overlays `upper` onto `base` in place: objects merge key by key, anything else replaces.
fn merge_into(base: &mut Map<String, Value>, upper: &Map<String, Value>) {
    for (key, upper_value) in upper {
        match (base.get_mut(key), upper_value) {
            (Some(Value::Object(base_child)), Value::Object(upper_child)) => {
                merge_into(base_child, upper_child);
            }
            _ => {
                base.insert(key.clone(), upper_value.clone());
            }
        }
    }
}

/// Walks the keys that the user and the policy both set. Where both are objects the walk
/// goes deeper; anywhere else the policy's value replaces the user's, which counts as an
/// override unless the two are the same value.
fn collect_overridden(
    user: &Map<String, Value>,
    enforced: &Map<String, Value>,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (key, user_value) in user {
        let Some(enforced_value) = enforced.get(key) else {
            continue;
        };
        let path = join_path(prefix, key);
        match (user_value, enforced_value) {
            (Value::Object(u), Value::Object(e)) => collect_overridden(u, e, &path, out),
            (u, e) if same_value(u, e) => {}
            _ => out.push(path),
        }
    }
}

/// `prefix.key`, with `.` and `\` inside `key` escaped by a backslash.
fn join_path(prefix: &str, key: &str) -> String {
    let mut path = String::with_capacity(prefix.len() + key.len() + 1);
    if !prefix.is_empty() {
        path.push_str(prefix);
        path.push('.');
    }
    for c in key.chars() {
        if c == '.' || c == '\\' {
            path.push('\\');
        }
        path.push(c);
    }
    path
}

/// JSON equality with numbers compared by value, so `1` and `1.0` are the same.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn merged(defaults: Value, user: Value, enforced: Option<Value>) -> Merged {
        effective_preferences(&defaults, &user, enforced.as_ref())
    }

    #[test]
    fn depth_counts_objects_and_arrays() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!("s")), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a": 1, "b": "x"})), 1);
        assert_eq!(depth(&json!({"a": {"b": 1}})), 2);
        assert_eq!(depth(&json!({"a": [1, 2]})), 2);
        assert_eq!(depth(&json!({"a": [{"b": 1}]})), 3);
        assert_eq!(depth(&json!({"a": {"b": {"c": {"d": 1}}}})), 4);
        assert_eq!(depth(&json!({"a": 1, "z": {"b": {"c": [[]]}}})), 5);
    }

    #[test]
    fn depth_survives_very_deep_values() {
        let mut value = json!(0);
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        assert_eq!(depth(&value), 100_000);
        // Dropping a value this deep would recurse in serde_json's Drop; unwind it
        // iteratively instead.
        while let Value::Array(mut items) = value {
            value = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn validate_accepts_a_document_at_the_limits() {
        let four_deep = json!({"a": {"b": {"c": {"d": 1}}}});
        assert_eq!(validate_preferences(MAX_BYTES, &four_deep), Ok(()));
        assert_eq!(validate_preferences(2, &json!({})), Ok(()));
        assert_eq!(
            validate_preferences(10, &json!({"a": {"b": {"c": [1]}}})),
            Ok(())
        );
        assert_eq!(validate_preferences(10, &json!({"a": [[[1]]]})), Ok(()));
    }

    #[test]
    fn validate_checks_size_first() {
        let err = validate_preferences(MAX_BYTES + 1, &json!("not even an object"));
        assert_eq!(
            err,
            Err(PreferenceError::TooLarge {
                len: MAX_BYTES + 1,
                max: MAX_BYTES
            })
        );
    }

    #[test]
    fn validate_rejects_non_objects() {
        for value in [json!([]), json!(null), json!(1), json!("x"), json!(true)] {
            assert_eq!(
                validate_preferences(10, &value),
                Err(PreferenceError::NotAnObject),
                "{value}"
            );
        }
    }

    #[test]
    fn validate_rejects_too_deep_including_through_arrays() {
        for value in [
            json!({"a": {"b": {"c": {"d": {}}}}}),
            json!({"a": {"b": {"c": [[1]]}}}),
            json!({"a": [[[[1]]]]}),
            json!({"ok": 1, "a": [{"b": {"c": {}}}]}),
        ] {
            assert_eq!(
                validate_preferences(10, &value),
                Err(PreferenceError::TooDeep { max: MAX_DEPTH }),
                "{value}"
            );
        }
    }

    #[test]
    fn errors_read_well() {
        let err = PreferenceError::TooLarge {
            len: 20000,
            max: 16384,
        };
        assert_eq!(
            err.to_string(),
            "preferences body is 20000 bytes; at most 16384 are accepted"
        );
    }

    #[test]
    fn defaults_sit_under_notifications() {
        let m = merged(json!({"email": true}), json!({}), None);
        assert_eq!(m.preferences, json!({"notifications": {"email": true}}));
        assert!(m.overridden.is_empty());
    }

    #[test]
    fn user_overlays_defaults_key_by_key() {
        let m = merged(
            json!({"email": true, "push": true}),
            json!({"notifications": {"push": false}, "theme": "dark"}),
            None,
        );
        assert_eq!(
            m.preferences,
            json!({"notifications": {"email": true, "push": false}, "theme": "dark"})
        );
        assert!(m.overridden.is_empty());
    }

    #[test]
    fn enforced_wins_and_is_reported() {
        let m = merged(
            json!({"email": true, "marketing": true}),
            json!({"notifications": {"marketing": true}, "theme": "dark"}),
            Some(json!({"notifications": {"marketing": false}})),
        );
        assert_eq!(
            m.preferences,
            json!({"notifications": {"email": true, "marketing": false}, "theme": "dark"})
        );
        assert_eq!(m.overridden, vec!["notifications.marketing"]);
    }

    #[test]
    fn enforcing_a_default_the_user_did_not_touch_is_not_an_override() {
        let m = merged(
            json!({"marketing": true}),
            json!({"theme": "dark"}),
            Some(json!({"notifications": {"marketing": false}})),
        );
        assert_eq!(m.preferences["notifications"]["marketing"], json!(false));
        assert!(m.overridden.is_empty());
    }

    #[test]
    fn same_value_as_policy_is_not_an_override() {
        let m = merged(
            json!({}),
            json!({"a": 1, "b": {"c": [1, 2]}, "d": 2.0}),
            Some(json!({"a": 1, "b": {"c": [1, 2]}, "d": 2})),
        );
        assert!(m.overridden.is_empty(), "{:?}", m.overridden);
    }

    #[test]
    fn scalar_replacing_a_user_subtree_reports_the_subtree() {
        let m = merged(
            json!({}),
            json!({"privacy": {"share": true, "ads": {"personalized": true}}}),
            Some(json!({"privacy": "locked"})),
        );
        assert_eq!(m.preferences["privacy"], json!("locked"));
        assert_eq!(m.overridden, vec!["privacy"]);
    }

    #[test]
    fn object_replacing_a_user_scalar_reports_the_scalar() {
        let m = merged(
            json!({}),
            json!({"privacy": "open"}),
            Some(json!({"privacy": {"share": false}})),
        );
        assert_eq!(m.preferences["privacy"], json!({"share": false}));
        assert_eq!(m.overridden, vec!["privacy"]);
    }

    #[test]
    fn arrays_and_null_are_replaced_wholesale() {
        let m = merged(
            json!({"channels": ["email", "push"]}),
            json!({"notifications": {"channels": ["sms"]}, "x": {"y": 1}}),
            Some(json!({"notifications": {"channels": ["email"]}, "x": null})),
        );
        assert_eq!(m.preferences["notifications"]["channels"], json!(["email"]));
        assert_eq!(m.preferences["x"], json!(null));
        assert_eq!(m.overridden, vec!["notifications.channels", "x"]);
    }

    #[test]
    fn partial_policy_on_a_user_object_keeps_the_rest() {
        let m = merged(
            json!({}),
            json!({"a": {"b": 1, "c": 2}}),
            Some(json!({"a": {"c": 3, "d": 4}})),
        );
        assert_eq!(m.preferences["a"], json!({"b": 1, "c": 3, "d": 4}));
        assert_eq!(m.overridden, vec!["a.c"]);
    }

    #[test]
    fn overridden_is_sorted() {
        let m = merged(
            json!({}),
            json!({"z": 1, "a": {"y": 1, "b": 1}, "m": 1}),
            Some(json!({"z": 2, "a": {"y": 2, "b": 2}, "m": 2})),
        );
        assert_eq!(m.overridden, vec!["a.b", "a.y", "m", "z"]);
    }

    #[test]
    fn dots_and_backslashes_in_keys_are_escaped() {
        let m = merged(
            json!({}),
            json!({"a.b": {"c\\d": 1}, "a": {"b": 1}}),
            Some(json!({"a.b": {"c\\d": 2}, "a": {"b": 2}})),
        );
        assert_eq!(m.overridden, vec!["a.b", "a\\.b.c\\\\d"]);
    }

    #[test]
    fn non_object_layers_are_ignored() {
        let m = merged(json!({"e": 1}), json!([1, 2]), Some(json!("locked")));
        assert_eq!(m.preferences, json!({"notifications": {"e": 1}}));
        assert!(m.overridden.is_empty());
    }

    #[test]
    fn user_may_replace_the_defaults_object_with_a_scalar() {
        // The user's layer is an ordinary overlay; only policy is protected.
        let m = merged(json!({"e": 1}), json!({"notifications": false}), None);
        assert_eq!(m.preferences, json!({"notifications": false}));
    }

    #[test]
    fn policy_may_restore_notifications_over_a_user_scalar() {
        let m = merged(
            json!({"e": 1}),
            json!({"notifications": false}),
            Some(json!({"notifications": {"security": true}})),
        );
        assert_eq!(m.preferences, json!({"notifications": {"security": true}}));
        assert_eq!(m.overridden, vec!["notifications"]);
    }

    // ----- property tests -----

    /// Few distinct keys, so the three layers overlap often; one holds a dot.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("c"),
            Just("d.e"),
            Just("notifications")
        ]
        .prop_map(String::from)
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0i64..3).prop_map(Value::from),
            prop::collection::vec((0i64..3).prop_map(Value::from), 0..3).prop_map(Value::Array),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    fn object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map(key(), value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// Every (path, value) pair of `value`, where objects are walked into and the path of
    /// each non-object value (and of each empty object) is reported.
    fn leaves(value: &Value) -> Vec<(Vec<String>, Value)> {
        fn walk(value: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
            match value {
                Value::Object(map) if !map.is_empty() => {
                    for (k, v) in map {
                        path.push(k.clone());
                        walk(v, path, out);
                        path.pop();
                    }
                }
                other => out.push((path.clone(), other.clone())),
            }
        }
        let mut out = Vec::new();
        walk(value, &mut Vec::new(), &mut out);
        out
    }

    /// Every path at which `value` has an object member.
    fn paths(value: &Value) -> Vec<Vec<String>> {
        leaves(value)
            .into_iter()
            .flat_map(|(path, _)| (1..=path.len()).map(move |n| path[..n].to_vec()))
            .collect()
    }

    fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
        path.iter().try_fold(value, |v, k| v.as_object()?.get(k))
    }

    proptest! {
        #[test]
        fn policy_always_wins(defaults in value(), user in object(), enforced in object()) {
            let m = effective_preferences(&defaults, &user, Some(&enforced));
            for (path, expected) in leaves(&enforced) {
                if path.is_empty() {
                    continue;
                }
                let got = get(&m.preferences, &path);
                if expected == json!({}) {
                    let is_object = got.is_some_and(Value::is_object);
                    prop_assert!(is_object, "{:?} in {}", path, m.preferences);
                } else {
                    prop_assert_eq!(got, Some(&expected), "{:?} in {}", path, m.preferences);
                }
            }
        }

        #[test]
        fn merge_never_invents_keys(defaults in value(), user in object(), enforced in object()) {
            let m = effective_preferences(&defaults, &user, Some(&enforced));
            let base = json!({"notifications": defaults});
            for path in paths(&m.preferences) {
                prop_assert!(
                    [&base, &user, &enforced].iter().any(|layer| get(layer, &path).is_some()),
                    "{:?} invented in {}", path, m.preferences
                );
            }
        }

        #[test]
        fn without_policy_every_user_leaf_survives(defaults in value(), user in object()) {
            let m = effective_preferences(&defaults, &user, None);
            prop_assert!(m.overridden.is_empty());
            for (path, expected) in leaves(&user) {
                if path.is_empty() || expected == json!({}) {
                    continue;
                }
                prop_assert_eq!(get(&m.preferences, &path), Some(&expected));
            }
        }

        #[test]
        fn overridden_paths_are_user_paths_that_changed(
            defaults in value(),
            user in object(),
            enforced in object(),
        ) {
            let m = effective_preferences(&defaults, &user, Some(&enforced));
            prop_assert!(m.overridden.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
            for path in &m.overridden {
                let keys = split_path(path);
                let submitted = get(&user, &keys);
                prop_assert!(submitted.is_some(), "{} is not a user path", path);
                prop_assert_ne!(submitted, get(&m.preferences, &keys), "{} did not change", path);
            }
        }

        #[test]
        fn depth_matches_a_recursive_definition(v in value()) {
            fn reference(v: &Value) -> usize {
                match v {
                    Value::Object(m) => 1 + m.values().map(reference).max().unwrap_or(0),
                    Value::Array(a) => 1 + a.iter().map(reference).max().unwrap_or(0),
                    _ => 0,
                }
            }
            prop_assert_eq!(depth(&v), reference(&v));
        }
    }

    /// Inverse of the path escaping, for the tests.
    fn split_path(path: &str) -> Vec<String> {
        let mut keys = vec![String::new()];
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => keys
                    .last_mut()
                    .into_iter()
                    .for_each(|k| k.extend(chars.next())),
                '.' => keys.push(String::new()),
                other => keys.last_mut().into_iter().for_each(|k| k.push(other)),
            }
        }
        keys
    }

    #[test]
    fn split_path_inverts_join_path() {
        let path = join_path(&join_path("", "a.b"), "c\\d");
        assert_eq!(split_path(&path), vec!["a.b", "c\\d"]);
    }
}
