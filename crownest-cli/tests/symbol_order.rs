//! `symbol-order.txt` (the release link's `--symbol-ordering-file`, `build.rs`) is what the
//! linker expects: one symbol name per line, `#` comments, no duplicates, and names of this
//! program's own code among them. A malformed list would not fail a build (the linker skips
//! names it does not know), it would only quietly stop helping; this catches a hand edit or a
//! broken `scripts/gen-symbol-order.sh`.

#![allow(clippy::unwrap_used)]

#[test]
fn the_symbol_order_file_lists_distinct_symbols_of_this_program() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(names.len() >= 500, "only {} names", names.len());
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$')),
            "not a symbol name: {name:?}"
        );
        assert!(seen.insert(*name), "listed twice: {name}");
    }
    // Mangled Rust names (legacy `_ZN…` or v0 `_R…`) of the CLI, the engine and the store.
    for krate in ["crownest", "crownest_core", "crownest_store_sqlite"] {
        let mangled = format!("{}{krate}", krate.len());
        assert!(
            names.iter().any(|n| n.contains(&mangled)),
            "no function of {krate} listed"
        );
    }
}
