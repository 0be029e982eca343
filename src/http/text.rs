//! [`Text`]: a JSON string field, strictly. poem-openapi's `String` also accepts a number
//! or a boolean and turns it into text; the contract's string fields are strings, and a
//! number where a string belongs is the wrong shape (400 `invalid_request` from a client,
//! 502 `upstream_error` from .NET). Validators (`min_length`, `pattern`, ...) apply as to
//! `String`, and the OpenAPI schema is a plain `string`.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use poem::http::HeaderValue;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

/// A string that was a JSON string. `Debug` does not show it (fields of this type hold
/// passwords and tokens).
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(s)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(s.to_owned())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Text({} chars)", self.0.chars().count())
    }
}

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new("string")))
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(std::iter::once(&self.0))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Text(s)),
            Some(other) => Err(ParseError::expected_type(other)),
            None => Err(ParseError::expected_input()),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

impl poem_openapi::types::ToHeader for Text {
    fn to_header(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.0).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_strings_parse() {
        assert_eq!(
            Text::parse_from_json(Some(json!("x"))).unwrap().as_str(),
            "x"
        );
        for bad in [json!(1), json!(true), json!(null), json!({}), json!([])] {
            assert!(Text::parse_from_json(Some(bad.clone())).is_err(), "{bad}");
        }
        assert!(Text::parse_from_json(None).is_err());
        assert_eq!(format!("{:?}", Text::from("hunter2")), "Text(7 chars)");
    }
}

/// A [`Text`] with a rule checked at parse time and stated in the OpenAPI schema (`pattern`,
/// `minLength`, `maxLength`). poem-openapi's `pattern` validator compiles its regex on every
/// check (tens of microseconds per field per request); these check by hand and keep the
/// schema. The rule's message names the field's rule, never the value.
macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident {
        pattern: $pattern:expr,
        min_length: $min:expr,
        max_length: $max:expr,
        rule: $rule:expr,
        check: $check:expr $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(pub Text);

        impl $name {
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// Whether `s` follows the rule.
            pub fn is_valid(s: &str) -> bool {
                let chars = s.chars().count();
                let check: fn(&str) -> bool = $check;
                ($min..=$max).contains(&chars) && check(s)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = String;
            type RawElementValueType = String;

            fn name() -> Cow<'static, str> {
                "string".into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    pattern: Some($pattern.to_owned()),
                    min_length: Some($min),
                    max_length: Some($max),
                    ..MetaSchema::new("string")
                }))
            }

            fn as_raw_value(&self) -> Option<&String> {
                Some(&(self.0).0)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
                Box::new(std::iter::once(&(self.0).0))
            }
        }

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                let text = Text::parse_from_json(value).map_err(ParseError::propagate)?;
                if Self::is_valid(text.as_str()) {
                    Ok($name(text))
                } else {
                    Err(ParseError::custom($rule))
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                self.0.to_json()
            }
        }
    };
}

checked_text! {
    /// An email address as the contract bounds it: 3..254 characters, containing `@`.
    Email {
        pattern: "@",
        min_length: 3,
        max_length: 254,
        rule: "must be 3..254 characters and contain @",
        check: |s| s.contains('@'),
    }
}

checked_text! {
    /// A one-time code: exactly 6 ASCII digits.
    OtpCode {
        pattern: "^[0-9]{6}$",
        min_length: 6,
        max_length: 6,
        rule: "must be exactly 6 ASCII digits",
        check: |s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()),
    }
}

checked_text! {
    /// The token type of the contract's `Tokens`: exactly `Bearer`.
    BearerType {
        pattern: "^Bearer$",
        min_length: 6,
        max_length: 6,
        rule: "must be Bearer",
        check: |s| s == "Bearer",
    }
}

#[cfg(test)]
mod checked_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_hold_and_errors_never_echo() {
        assert!(Email::is_valid("a@b"));
        assert!(!Email::is_valid("ab"));
        assert!(!Email::is_valid("abc"));
        assert!(!Email::is_valid(&format!("{}@x", "a".repeat(253))));
        assert!(OtpCode::is_valid("012345"));
        for bad in ["12345", "1234567", "12345a", "١٢٣٤٥٦", " 12345", "12345\n"] {
            assert!(!OtpCode::is_valid(bad), "{bad:?}");
        }
        assert!(BearerType::is_valid("Bearer"));
        assert!(!BearerType::is_valid("bearer"));
        let err = OtpCode::parse_from_json(Some(json!("99999x"))).unwrap_err();
        assert!(!err.message().contains("99999x"), "{}", err.message());
        assert!(OtpCode::parse_from_json(Some(json!(123456))).is_err());
        let schema = OtpCode::schema_ref();
        let MetaSchemaRef::Inline(schema) = schema else {
            panic!("inline")
        };
        assert_eq!(schema.pattern.as_deref(), Some("^[0-9]{6}$"));
    }
}
