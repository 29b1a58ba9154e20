//! `examples/bookshop/dashboard.json` checked against Grafana's dashboard
//! schema (the dashboard kind's `spec`, grafana/grafana
//! `docs/sources/developers/kinds/core/dashboard/schema-reference.md`):
//! the typed fields below must be there with these types (serde rejects
//! the file otherwise: `schemaVersion` a uint16, `graphTooltip` 0 to 2, a
//! uid of 8 to 40 characters, panels with a type and a grid position), and
//! the checks in [`load`] hold: unique panel ids and query ids, panels
//! inside the 24-column grid without overlapping, every query on the
//! `${datasource}` variable, which is a Prometheus data source variable,
//! and PromQL with balanced brackets.

use std::collections::BTreeSet;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    pub title: String,
    pub uid: String,
    pub schema_version: u16,
    pub graph_tooltip: u8,
    pub version: u32,
    pub editable: bool,
    pub time: TimeRange,
    pub templating: Templating,
    pub panels: Vec<Panel>,
    pub tags: Vec<String>,
    pub refresh: String,
}

#[derive(Debug, Deserialize)]
pub struct TimeRange {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Deserialize)]
pub struct Templating {
    pub list: Vec<Variable>,
}

#[derive(Debug, Deserialize)]
pub struct Variable {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub query: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Panel {
    pub id: u32,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub grid_pos: GridPos,
    pub datasource: DataSource,
    pub targets: Vec<Target>,
    pub field_config: FieldConfig,
}

#[derive(Debug, Deserialize)]
pub struct GridPos {
    pub h: u32,
    pub w: u32,
    pub x: u32,
    pub y: u32,
}

#[derive(Debug, Deserialize, PartialEq)]
pub struct DataSource {
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub ref_id: String,
    pub expr: String,
    pub legend_format: String,
    pub datasource: DataSource,
}

#[derive(Debug, Deserialize)]
pub struct FieldConfig {
    pub defaults: serde_json::Value,
    pub overrides: Vec<serde_json::Value>,
}

/// The panel types the dashboard may use (Grafana's built-in ones).
const PANEL_TYPES: [&str; 4] = ["timeseries", "stat", "gauge", "bargauge"];

/// The dashboard, parsed and checked (a panic says what is wrong).
pub fn load() -> Dashboard {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/bookshop/dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    let board: Dashboard = serde_json::from_str(&text).expect("Grafana's dashboard model");
    assert!(!board.title.is_empty());
    assert!(
        (8..=40).contains(&board.uid.len()),
        "Grafana's uids are 8 to 40 characters"
    );
    assert!(board.graph_tooltip <= 2, "graphTooltip is 0, 1 or 2");
    assert!(board.schema_version >= 36, "{}", board.schema_version);
    assert!(board.time.from.starts_with("now") && board.time.to == "now");
    assert!(board.version >= 1 && board.editable && !board.tags.is_empty());
    assert!(board.refresh.ends_with('s') || board.refresh.ends_with('m'));
    let variable = |name: &str| {
        board
            .templating
            .list
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    let ds = variable("datasource");
    assert_eq!(
        (ds.kind.as_str(), ds.query.as_str()),
        ("datasource", Some("prometheus"))
    );
    assert_eq!(variable("cache").kind, "query");
    let prometheus = DataSource {
        kind: "prometheus".into(),
        uid: "${datasource}".into(),
    };
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in &board.panels {
        assert!(ids.insert(panel.id), "panel id {} twice", panel.id);
        assert!(PANEL_TYPES.contains(&panel.kind.as_str()), "{}", panel.kind);
        assert!(!panel.title.is_empty());
        let g = &panel.grid_pos;
        assert!(
            g.w >= 1 && g.h >= 1 && g.x + g.w <= 24,
            "{}: {g:?}",
            panel.title
        );
        for x in g.x..g.x + g.w {
            for y in g.y..g.y + g.h {
                assert!(
                    cells.insert((x, y)),
                    "{} overlaps another panel",
                    panel.title
                );
            }
        }
        assert_eq!(panel.datasource, prometheus, "{}", panel.title);
        assert!(panel.field_config.defaults.is_object(), "{}", panel.title);
        assert!(panel.field_config.overrides.is_empty(), "{}", panel.title);
        assert!(!panel.targets.is_empty(), "{} has no query", panel.title);
        let mut refs = BTreeSet::new();
        for target in &panel.targets {
            assert!(refs.insert(&target.ref_id), "{}: refId twice", panel.title);
            assert_eq!(target.datasource, prometheus, "{}", panel.title);
            assert!(balanced(&target.expr), "{}: {}", panel.title, target.expr);
            assert!(!target.legend_format.is_empty(), "{}", panel.title);
        }
    }
    board
}

impl Dashboard {
    /// The series the queries read (`cache_*` names, histograms by their
    /// `_bucket` and `_count` series).
    pub fn series(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for target in self.panels.iter().flat_map(|p| &p.targets) {
            let expr = &target.expr;
            let mut at = 0;
            while let Some(found) = expr[at..].find("cache_") {
                let start = at + found;
                let end = expr[start..]
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .map_or(expr.len(), |n| start + n);
                let preceded = expr[..start]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                if !preceded {
                    out.insert(expr[start..end].to_owned());
                }
                at = end;
            }
        }
        out
    }
}

/// Whether `()`, `[]`, `{}` nest properly and quotes close.
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !quoted
}
