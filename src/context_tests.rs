//! CS-*: the reference's context (de)serialization scenarios. Typed entries must read back
//! equal after serialize → deserialize → serialize (with both JSON texts identical); entries
//! nobody knows must come back as the exact same JSON text.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::json;

use super::*;

/// A typed entry holding a `T` under the name `TestElement`.
struct Key<T>(PhantomData<T>);
impl<T: Serialize + DeserializeOwned> ContextKey for Key<T> {
    const NAME: &'static str = "TestElement";
    type Value = Element<T>;
}

/// Like the reference's test elements: the value is a field of the element.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Element<T> {
    value: T,
}

fn round_trip(context: &CooperationContext) -> CooperationContext {
    let first = context.to_json();
    let back = CooperationContext::from_json(&first).unwrap();
    let second = back.to_json();
    assert_eq!(first, second, "serialize, deserialize, serialize again");
    let third = CooperationContext::from_json(&second).unwrap().to_json();
    assert_eq!(second, third, "a second round trip changes nothing either");
    back
}

fn typed<T>(value: T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
{
    let element = Element { value };
    let context = CooperationContext::with::<Key<T>>(&element).unwrap();
    let back = round_trip(&context);
    assert_eq!(back.get::<Key<T>>().unwrap(), Some(element));
}

fn json_round_trip(json: &str) {
    let context = CooperationContext::from_json(json).unwrap();
    assert_eq!(context.to_json(), json);
}

fn opaque(raw: &str) {
    let mut context = CooperationContext::new();
    context.set_raw("TestOpaque", raw).unwrap();
    let back = round_trip(&context);
    assert_eq!(back.get_raw("TestOpaque"), Some(raw));
}

#[test]
fn cs_01_empty() {
    json_round_trip("{}");
    assert!(CooperationContext::from_json("{}").unwrap().is_empty());
}

#[test]
fn cs_02_null_values_are_preserved() {
    json_round_trip(r#"{"key-with-null":null}"#);
}

#[test]
fn cs_03_null_values_mixed_with_other_values() {
    json_round_trip(r#"{"a-before":"a","b-nullable":null,"c-after":"b"}"#);
}

#[test]
fn cs_04_nested_null_values() {
    json_round_trip(r#"{"outer":{"inner":null,"range":null}}"#);
}

#[test]
fn cs_05_null_values_in_arrays() {
    json_round_trip(r#"{"items":[1,null,3]}"#);
}

macro_rules! typed_cases {
    ($($name:ident => $value:expr;)*) => {
        $(#[test] fn $name() { typed($value) })*
    };
}

typed_cases! {
    cs_08_tab_character => "hello\tworld".to_owned();
    cs_09_newline_character => "line1\nline2".to_owned();
    cs_10_carriage_return => "line1\rline2".to_owned();
    cs_11_carriage_return_plus_newline => "line1\r\nline2".to_owned();
    cs_12_escaped_double_quotes => r#"say "hello""#.to_owned();
    cs_13_backslashes => r"C:\Users\test\file.txt".to_owned();
    cs_14_forward_slash => "path/to/file".to_owned();
    cs_15_backspace_character => "hello\u{8}world".to_owned();
    cs_16_form_feed_character => "hello\u{c}world".to_owned();
    cs_19_multiple_special_chars_in_sequence => "\t\t\n\n\"\"\\".to_owned();
    cs_21_cjk_characters => "你好世界".to_owned();
    cs_23_arabic_text => "مرحبا".to_owned();
    cs_24_mixed_ascii_and_unicode => "hello 世界 world".to_owned();
    cs_26_zero_width_characters => "a\u{200B}b\u{200C}c\u{FEFF}d".to_owned();
    cs_27_empty_string => String::new();
    cs_28_string_with_only_spaces => "   ".to_owned();
    cs_29_very_long_string => "a".repeat(10_000);
    cs_30_long_string_with_special_chars_throughout =>
        (1..=1000).map(|n| format!("item\t{n}\n")).collect::<String>();
    cs_31_string_that_looks_like_json => r#"{"key": "value"}"#.to_owned();
    cs_32_string_that_looks_like_a_number => "12345".to_owned();
    cs_33_string_that_looks_like_a_boolean => "true".to_owned();
    cs_34_string_that_looks_like_null => "null".to_owned();
    cs_40_true_value => true;
    cs_41_false_value => false;
    cs_42_null_field_value => None::<String>;
    cs_43_non_null_field_value => Some("present".to_owned());
    cs_45_empty_list => Vec::<String>::new();
    cs_46_single_item_list => vec!["only".to_owned()];
    cs_47_multi_item_list => vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
    cs_48_list_with_special_characters_in_items =>
        vec!["tab\there".to_owned(), "new\nline".to_owned(), "quote\"d".to_owned()];
    cs_49_list_with_empty_strings => vec![String::new(), String::new(), String::new()];
    cs_50_nested_list_via_map =>
        std::collections::BTreeMap::from([("nested".to_owned(), vec![vec![1, 2], vec![3, 4]])]);
    cs_55_empty_map => std::collections::BTreeMap::<String, String>::new();
    cs_56_map_with_various_value_types =>
        json!({"s": "text", "n": 42, "b": true, "l": [1, "two", null]});
    cs_57_map_with_nested_map => json!({"outer": {"inner": "value"}});
}

#[test]
fn cs_20_special_chars_preserve_the_typed_value() {
    let element = Element {
        value: "hello\tworld".to_owned(),
    };
    let context = CooperationContext::with::<Key<String>>(&element).unwrap();
    let back = round_trip(&context);
    assert_eq!(
        back.get::<Key<String>>().unwrap().unwrap().value,
        "hello\tworld"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Numbers {
    int: i32,
    long: i64,
    double: f64,
    float: f32,
}

#[test]
fn cs_35_positive_integers() {
    typed(Numbers {
        int: 42,
        long: 42,
        double: 42.0,
        float: 42.0,
    });
}

#[test]
fn cs_36_zero() {
    typed(Numbers {
        int: 0,
        long: 0,
        double: 0.0,
        float: 0.0,
    });
}

#[test]
#[allow(clippy::approx_constant)] // the reference's value
fn cs_37_negative_numbers() {
    typed(Numbers {
        int: -42,
        long: -100,
        double: -3.14,
        float: -2.5,
    });
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    x: i32,
    y: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deep {
    level1: Level1,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Level1 {
    level2: Level2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Level2 {
    level3: String,
}

fn deep(text: &str) -> Deep {
    Deep {
        level1: Level1 {
            level2: Level2 {
                level3: text.to_owned(),
            },
        },
    }
}

#[test]
fn cs_51_simple_nested_object() {
    typed(Inner {
        x: 42,
        y: "hello".to_owned(),
    });
}

#[test]
fn cs_52_nested_object_with_special_chars() {
    typed(Inner {
        x: 1,
        y: "tab\there\nnew \"quoted\"".to_owned(),
    });
}

#[test]
fn cs_53_deeply_nested_objects() {
    typed(deep("deep value"));
}

#[test]
fn cs_54_deeply_nested_with_special_chars() {
    typed(deep("deep\t\"value\"\n"));
}

#[test]
fn cs_58_opaque_simple_object() {
    opaque(r#"{"key":"value"}"#);
}

#[test]
fn cs_59_opaque_object_keeps_its_escape_form() {
    opaque(r#"{"key":"hello\tworld"}"#);
    // Escapes that could be written differently are kept as written, too.
    opaque(r#"{"key":"a\/b \u00e9 \ud83d\ude00"}"#);
}

#[test]
fn cs_60_opaque_nested_object() {
    opaque(r#"{"a":{"b":{"c":"deep"}}}"#);
}

#[test]
fn cs_61_opaque_array_value() {
    opaque("[1,2,3]");
    // Whitespace and number formatting inside an entry are kept too.
    opaque("[1.0, 2e3,\n -0 ]");
}

struct Text;
impl ContextKey for Text {
    const NAME: &'static str = "TestString";
    type Value = String;
}
struct Flag;
impl ContextKey for Flag {
    const NAME: &'static str = "TestBool";
    type Value = bool;
}
struct Nullable;
impl ContextKey for Nullable {
    const NAME: &'static str = "TestNullable";
    type Value = Option<String>;
}

#[test]
fn cs_64_two_elements_combined() {
    let context = CooperationContext::with::<Text>(&"hello\tworld".to_owned())
        .unwrap()
        .merged(&CooperationContext::with::<Flag>(&true).unwrap());
    let back = round_trip(&context);
    assert_eq!(back.get::<Text>().unwrap().as_deref(), Some("hello\tworld"));
    assert_eq!(back.get::<Flag>().unwrap(), Some(true));
    assert_eq!(
        back.to_json(),
        r#"{"TestBool":true,"TestString":"hello\tworld"}"#
    );
}

#[test]
fn cs_65_three_elements_combined() {
    let context = CooperationContext::with::<Text>(&"test\n".to_owned())
        .unwrap()
        .merged(&CooperationContext::with::<Flag>(&false).unwrap())
        .merged(&CooperationContext::with::<Nullable>(&None).unwrap());
    let back = round_trip(&context);
    assert_eq!(back.len(), 3);
    assert_eq!(back.get::<Text>().unwrap().as_deref(), Some("test\n"));
    assert_eq!(back.get::<Flag>().unwrap(), Some(false));
    // JSON null under a typed key reads as absent, but the entry is kept.
    assert_eq!(back.get::<Nullable>().unwrap(), None);
    assert_eq!(back.get_raw("TestNullable"), Some("null"));
}

#[test]
fn cs_66_complex_element_plus_simple_element() {
    let nested = CooperationContext::with::<Key<Deep>>(&Element { value: deep("x") }).unwrap();
    let list = CooperationContext::with::<Key<Vec<String>>>(&Element {
        value: vec!["line\n".to_owned(), "\"q\"".to_owned()],
    })
    .unwrap();
    // Same entry name: the right-hand side wins.
    let merged = nested.clone().merged(&list);
    let back = round_trip(&merged);
    assert_eq!(back.len(), 1);
    assert_eq!(
        back.get::<Key<Vec<String>>>().unwrap().unwrap().value,
        ["line\n", "\"q\""]
    );
    let mut both = nested;
    both.set::<Text>(&"plain".to_owned()).unwrap();
    let back = round_trip(&both);
    assert_eq!(back.get::<Key<Deep>>().unwrap().unwrap().value, deep("x"));
}

#[test]
fn cs_67_string_with_special_chars_survives_a_double_round_trip() {
    typed("\t\"\\\n\r\u{1}\u{1F600}".to_owned());
}

#[test]
fn cs_68_complex_nested_structure_survives_a_double_round_trip() {
    typed(json!({"a": [{"b": "\t\n", "c": [null, {"d": "\"deep\""}]}], "e": {"f": {"g": "\\"}}}));
}

#[test]
fn an_entry_of_the_wrong_type_is_an_error_naming_it_and_is_kept() {
    let mut context = CooperationContext::new();
    context.set_raw("TestString", "[1, 2]").unwrap();
    let err = context.get::<Text>().unwrap_err();
    assert!(
        err.to_string().starts_with(
            "context entry \"TestString\" does not deserialize into alloc::string::String"
        ),
        "{err}"
    );
    assert_eq!(context.get_raw("TestString"), Some("[1, 2]"));
}

#[test]
fn invalid_json_is_rejected() {
    let mut context = CooperationContext::new();
    let err = context.set_raw("Broken", "{nope").unwrap_err();
    assert!(err.to_string().contains("\"Broken\""), "{err}");
    assert!(CooperationContext::from_json("[1]").is_err());
}

#[test]
fn merging_keeps_one_sided_entries_and_the_right_side_wins() {
    let mut left = CooperationContext::new();
    left.set_raw("A", "1").unwrap();
    left.set_raw("B", "1").unwrap();
    let mut right = CooperationContext::new();
    right.set_raw("B", "2").unwrap();
    right.set_raw("C", "2").unwrap();
    assert_eq!(left.merged(&right).to_json(), r#"{"A":1,"B":2,"C":2}"#);
}

#[test]
fn the_empty_context_is_stored_as_null() {
    assert_eq!(CooperationContext::new().to_stored(), None);
    assert!(CooperationContext::from_stored(None).unwrap().is_empty());
}
