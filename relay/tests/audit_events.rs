//! The table of audit events (`docs/audit-events.md`) against the code: every relay event
//! (`pwrelay_relay::audit::Kind`) and every agent event id (`agent/src/audit.rs`'s `ids`, and the
//! Password Protection filter ids the agent's pre-check logs) has its row, with its name, and
//! every row names an id the code defines.

use std::collections::BTreeMap;

use pwrelay_relay::audit::Kind;

const TABLE: &str = include_str!("../../docs/audit-events.md");
const AGENT_AUDIT: &str = include_str!("../../agent/src/audit.rs");

/// The table's rows: id → (side, event name).
fn rows() -> BTreeMap<u32, (String, String)> {
    let mut rows = BTreeMap::new();
    for line in TABLE.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| id ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let id: u32 = cells[1].parse().unwrap_or_else(|_| panic!("a row without an id: {line}"));
        let name = cells[3].trim_matches('`').to_owned();
        assert!(rows.insert(id, (cells[2].to_owned(), name)).is_none(), "{id} has two rows");
    }
    rows
}

/// The agent's ids: every `pub const NAME: u32 = ID;` of its `ids` module.
fn agent_ids() -> Vec<u32> {
    let ids = &AGENT_AUDIT[AGENT_AUDIT.find("pub mod ids").expect("the ids module")..];
    let ids = &ids[..ids.find("\n}").expect("its end")];
    ids.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|l| l.rsplit_once("= ").and_then(|(_, v)| v.trim_end_matches(';').parse().ok()).expect("an id"))
        .collect()
}

#[test]
fn every_event_id_of_relay_and_agent_is_in_the_table_and_nothing_else() {
    let mut rows = rows();
    for kind in Kind::ALL {
        let row =
            rows.remove(&u32::from(kind.id())).unwrap_or_else(|| panic!("{} ({}) has no row", kind.id(), kind.name()));
        assert_eq!(row, ("relay".to_owned(), kind.name().to_owned()), "the row of {}", kind.id());
    }
    let agent = agent_ids();
    assert!(agent.len() >= 18, "the agent's ids were found: {agent:?}");
    // The Password Protection filter events of a password set (the agent only sets passwords).
    for id in agent.into_iter().chain([10015, 10017, 10025]) {
        let row = rows.remove(&id).unwrap_or_else(|| panic!("agent event {id} has no row"));
        assert_eq!(row.0, "agent", "the row of {id}");
    }
    assert!(rows.is_empty(), "rows for ids the code does not define: {rows:?}");
}

#[test]
fn the_operating_section_of_the_readme_links_the_table() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## Operating pwrelay").expect("the section")..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |end| end + 3)];
    assert!(section.contains("(docs/audit-events.md)"), "the Operating pwrelay section links the event table");
}
