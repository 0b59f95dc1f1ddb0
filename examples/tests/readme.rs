//! The README says what the code does: the versions in "Add it" are the
//! workspace's pins, and the "Defaults" table is `StackBuilder::new`'s.
//! (Its code blocks are compiled as doc tests: `ReadmeDoctests` in
//! `src/lib.rs`.) Every example is in its "Examples" table and run by
//! `.ci/run`.

use std::time::Duration;

use tower_cql_middleware::retry::{Backoff, BudgetConfig, RetryConfig};
use tower_cql_middleware::timeout::TimeoutConfig;

const README: &str = include_str!("../../README.md");
const WORKSPACE: &str = include_str!("../../Cargo.toml");
const EXAMPLES_MANIFEST: &str = include_str!("../Cargo.toml");
const CI: &str = include_str!("../../.ci/run");

/// The version of `name` in a `name = "v"` or `name = { version = "v", .. }`
/// line of `text`, the first such line.
fn version_of(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line
            .strip_prefix(name)?
            .trim_start()
            .strip_prefix('=')?
            .trim_start();
        let rest = rest.strip_prefix('{').map_or(rest, |r| {
            r.split_once("version").map_or("", |(_, v)| {
                v.trim_start().trim_start_matches('=').trim_start()
            })
        });
        let rest = rest.strip_prefix('"')?;
        Some(rest[..rest.find('"')?].to_owned())
    })
}

#[test]
fn add_it_pins_the_workspace_versions() {
    let start = README.find("## Add it").expect("README has \"## Add it\"");
    let block = &README[start..];
    let block = &block[block.find("```toml").expect("a toml block")..];
    let block = &block[..block[3..].find("```").expect("the block ends") + 3];
    for name in ["scylla", "tokio", "tower", "tracing-subscriber"] {
        let readme = version_of(block, name).unwrap_or_else(|| panic!("\"Add it\" lists {name}"));
        let pinned =
            version_of(WORKSPACE, name).unwrap_or_else(|| panic!("Cargo.toml pins {name}"));
        assert_eq!(
            readme, pinned,
            "README \"Add it\" and [workspace.dependencies] disagree on {name}"
        );
    }
    for name in [
        "tower-cql-core",
        "tower-cql-middleware",
        "tower-cql-exporters",
        "tower-cql-testkit",
    ] {
        assert!(
            block.lines().any(|l| l.starts_with(name)),
            "\"Add it\" lists {name}"
        );
    }
}

#[test]
fn the_defaults_table_is_the_code() {
    let retry = RetryConfig::default();
    assert_eq!(retry.max_attempts, 4);
    assert_eq!(
        retry.backoff,
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1)
        }
    );
    let BudgetConfig {
        ratio,
        min_per_second,
        window,
    } = retry.budget;
    assert_eq!(
        (ratio, min_per_second, window),
        (0.2, 10, Duration::from_secs(10))
    );
    assert_eq!(
        TimeoutConfig::default(),
        TimeoutConfig {
            per_attempt: None,
            honour_deadline: true
        }
    );
    for row in [
        "| attempts | 4 in all",
        "`0 ..= min(1 s, 10 ms × 2^n)`",
        "under 20% of the requests of the last 10 s, plus 10 a second",
        "| per-attempt timeout | none |",
    ] {
        assert!(README.contains(row), "README's defaults table says {row:?}");
    }
}

#[test]
fn every_example_is_in_the_readme_table_and_run_by_ci() {
    let names: Vec<&str> = EXAMPLES_MANIFEST
        .split("[[example]]")
        .skip(1)
        .map(|block| {
            let line = block
                .lines()
                .find(|l| l.starts_with("name = "))
                .expect("an [[example]] has a name");
            line.trim_start_matches("name = ").trim_matches('"')
        })
        .collect();
    assert!(names.contains(&"server_trace_tree"), "{names:?}");
    let start = README
        .find("## Examples")
        .expect("README has \"## Examples\"");
    let table = &README[start..];
    let table = &table[..table[3..].find("\n## ").map_or(table.len(), |i| i + 3)];
    let ci = CI
        .lines()
        .find(|l| l.starts_with("for example in "))
        .expect(".ci/run loops over the examples");
    for name in names {
        assert!(
            table.contains(&format!("| `{name}` |")),
            "README's Examples table lists {name}"
        );
        assert!(
            name == "quickstart"
                || ci
                    .split_whitespace()
                    .any(|w| w.trim_end_matches(';') == name),
            ".ci/run runs the example {name}"
        );
    }
    assert!(
        CI.contains("--example quickstart"),
        ".ci/run runs the quickstart"
    );
}
