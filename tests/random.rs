//! /v1/random against the real binary: forms, ranges, bad input.

mod support;

use support::{DataDir, Fibd};

fn json_number(body: &str, key: &str) -> i64 {
    let rest = body.split(&format!("\"{key}\": ")).nth(1).expect(key);
    let end = rest.find([',', '}']).unwrap();
    rest[..end].parse().unwrap()
}

#[test]
fn single_value_list_and_text_forms() {
    let data = DataDir::new("random");
    let fibd = Fibd::start(&data, &[]);
    let r = fibd.get("/v1/random");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let body = r.text();
    let value = json_number(&body, "value");
    assert!((0..=100).contains(&value), "{body}");
    assert_eq!(
        (json_number(&body, "min"), json_number(&body, "max")),
        (0, 100)
    );

    let r = fibd.get("/v1/random?min=-5&max=5&count=10");
    let body = r.text();
    let list = body.split('[').nth(1).unwrap().split(']').next().unwrap();
    let values: Vec<i64> = list.split(", ").map(|v| v.parse().unwrap()).collect();
    assert_eq!(values.len(), 10);
    assert!(values.iter().all(|v| (-5..=5).contains(v)), "{body}");

    let mut client = fibd.connect();
    let r = client.request(
        "GET",
        "/v1/random?min=7&max=7&count=3",
        &[("Accept", "text/plain")],
    );
    assert_eq!(r.text(), "7\n7\n7\n");
    let r = client.request(
        "GET",
        "/v1/random?min=-9223372036854775808&max=9223372036854775807&count=1000",
        &[("Accept", "text/plain")],
    );
    assert_eq!(r.text().lines().count(), 1000);
}

/// JavaScript's `JSON.parse` rounds integers beyond 2^53 - 1; such ranges
/// get strings, ranges within it numbers.
#[test]
fn json_numbers_stay_exact_for_javascript() {
    let data = DataDir::new("random-precision");
    let fibd = Fibd::start(&data, &[]);
    let body = fibd
        .get("/v1/random?min=9007199254740992&max=9223372036854775807&count=3")
        .text();
    let list = body.split('[').nth(1).unwrap().split(']').next().unwrap();
    for value in list.split(", ") {
        let digits = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
        let n: i64 = digits
            .unwrap_or_else(|| panic!("a string: {body}"))
            .parse()
            .unwrap();
        assert!(n >= 9_007_199_254_740_992, "{body}");
    }
    assert!(body.contains("\"min\": \"9007199254740992\""), "{body}");
    let body = fibd
        .get("/v1/random?min=-9007199254740991&max=9007199254740991")
        .text();
    // Plain numbers: json_number fails on a quoted one.
    assert!(json_number(&body, "value").abs() <= 9_007_199_254_740_991);
    assert_eq!(json_number(&body, "max"), 9_007_199_254_740_991);
}

#[test]
fn bad_ranges_are_400_naming_the_accepted_range() {
    let data = DataDir::new("random-bad");
    let fibd = Fibd::start(&data, &[]);
    let cases = [
        ("min=5&max=1", "min"),
        ("min=1.5", "integer"),
        ("max=9223372036854775808", "9223372036854775807"),
        ("count=0", "1 to 1000"),
        ("count=1001", "1 to 1000"),
        ("count=ten", "1 to 1000"),
        ("min=1&min=2", "min"),
        ("bogus=1", "min"),
    ];
    for (query, named) in cases {
        let r = fibd.get(&format!("/v1/random?{query}"));
        assert_eq!(r.status, 400, "{query}");
        let body = r.text();
        assert!(body.starts_with("{\"error\": "), "{query}: {body}");
        assert!(body.contains(named), "{query}: {body} should name {named}");
    }
    assert_eq!(fibd.post("/v1/random").status, 405);
}
