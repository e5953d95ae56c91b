//! The metrics a service documents against the metrics it exports, for the
//! tests that keep docs/operations.md true: every metric exported is listed
//! there with its meaning, and every metric listed is exported.
//!
//! The docs list a service's metrics in a markdown table under a heading
//! (`### Master metrics`, `### Worker metrics`), one row per metric family,
//! its name first in backquotes, then its type, labels and meaning:
//!
//! ```text
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `terrace_master_jobs` | gauge | | jobs registered with this master |
//! ```
//!
//! A family's name is the one its `# TYPE` line gives: a counter's ends in
//! `_total`, a histogram's is without its `_bucket`/`_sum`/`_count` suffixes.

use std::collections::BTreeMap;

/// One metric family as the docs list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentedMetric {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, ...
    pub kind: String,
    /// The labels column as written (`` `state` ``, empty for none).
    pub labels: String,
    pub meaning: String,
}

/// The metric table under the heading `heading` (the whole heading line,
/// `### Master metrics`) of `markdown`: its rows whose first cell is a name
/// in backquotes, until the table ends. `Err` names what is wrong: no such
/// heading, no table under it, a row without four cells or with an empty
/// meaning, a name twice.
pub fn documented(markdown: &str, heading: &str) -> Result<Vec<DocumentedMetric>, String> {
    let mut lines = markdown.lines();
    if !lines.by_ref().any(|l| l.trim_end() == heading) {
        return Err(format!("no heading {heading:?}"));
    }
    let mut out: Vec<DocumentedMetric> = Vec::new();
    let table = lines
        .take_while(|l| !l.starts_with('#'))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    for row in table {
        let cells: Vec<&str> = row
            .trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let Some(name) = cells
            .first()
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue; // the header row and its separator
        };
        let [_, kind, labels, meaning] = cells[..] else {
            return Err(format!(
                "{heading}: row of `{name}` has {} cells, not 4 (metric, type, labels, meaning)",
                cells.len()
            ));
        };
        if meaning.is_empty() {
            return Err(format!("{heading}: `{name}` has no meaning"));
        }
        if out.iter().any(|m| m.name == name) {
            return Err(format!("{heading}: `{name}` is listed twice"));
        }
        out.push(DocumentedMetric {
            name: name.to_string(),
            kind: kind.to_string(),
            labels: labels.to_string(),
            meaning: meaning.to_string(),
        });
    }
    if out.is_empty() {
        return Err(format!("{heading}: no metric table under it"));
    }
    Ok(out)
}

/// The metric families of a Prometheus text exposition, by name, with
/// their type: what its `# TYPE name type` lines say.
pub fn exported(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// What differs between `documented` and `exported`, one line each: a
/// family exported but not documented, documented but not exported, or
/// documented with another type. Empty when they agree.
pub fn differences(
    documented: &[DocumentedMetric],
    exported: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, kind) in exported {
        match documented.iter().find(|m| &m.name == name) {
            None => out.push(format!("`{name}` ({kind}) is exported but not documented")),
            Some(m) if &m.kind != kind => out.push(format!(
                "`{name}` is exported as a {kind} but documented as a {}",
                m.kind
            )),
            Some(_) => {}
        }
    }
    for m in documented {
        if !exported.contains_key(&m.name) {
            out.push(format!("`{}` is documented but not exported", m.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# Ops

### Master metrics

Some words.

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| `a_total` | counter | | things done |
| `b` | gauge | `state` | things by state |

More words.

### Worker metrics

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| `w` | gauge | | a worker's |
";

    #[test]
    fn tables_are_read_under_their_heading_only() {
        let master = documented(DOC, "### Master metrics").expect("a table");
        assert_eq!(
            master,
            [
                DocumentedMetric {
                    name: "a_total".into(),
                    kind: "counter".into(),
                    labels: "".into(),
                    meaning: "things done".into()
                },
                DocumentedMetric {
                    name: "b".into(),
                    kind: "gauge".into(),
                    labels: "`state`".into(),
                    meaning: "things by state".into()
                },
            ]
        );
        let worker = documented(DOC, "### Worker metrics").expect("a table");
        assert_eq!(worker.len(), 1);
        assert_eq!(
            documented(DOC, "### Agent metrics"),
            Err("no heading \"### Agent metrics\"".into())
        );
        let bad = DOC.replace(
            "| `b` | gauge | `state` | things by state |",
            "| `b` | gauge |",
        );
        assert_eq!(
            documented(&bad, "### Master metrics"),
            Err(
                "### Master metrics: row of `b` has 2 cells, not 4 (metric, type, labels, meaning)"
                    .into()
            )
        );
    }

    #[test]
    fn differences_go_both_ways_and_check_types() {
        let exposition = "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n\
                          # HELP c Other.\n# TYPE c gauge\nc{x=\"1\"} 1\n\
                          # TYPE b counter\nb_total 1\n";
        let exported = exported(exposition);
        assert_eq!(exported.len(), 3);
        let doc = documented(DOC, "### Master metrics").expect("a table");
        assert_eq!(
            differences(&doc, &exported),
            [
                "`b` is exported as a counter but documented as a gauge",
                "`c` (gauge) is exported but not documented",
            ]
        );
        let doc = documented(DOC, "### Worker metrics").expect("a table");
        assert_eq!(
            differences(&doc, &BTreeMap::new()),
            ["`w` is documented but not exported"]
        );
    }
}
