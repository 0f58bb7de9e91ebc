//! Just enough of the Prometheus text format for `linkcast top`: each sample line's metric name,
//! labels and value (comments, `# TYPE` / `# HELP` lines and timestamps are skipped).
//!
//! No crate in the tree parses the format and top reads a handful of series, so this stays a
//! small hand-written reader: label values may hold any character (`route="/v1/rooms/{room}"`)
//! and the format's escapes (`\\`, `\"`, `\n`); a line that does not parse is skipped, never an
//! error — a node's metrics are data from the network.

/// One sample: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Scrape {
    pub(crate) samples: Vec<Sample>,
}

impl Scrape {
    /// Parses a `/metrics` body.
    pub(crate) fn parse(text: &str) -> Scrape {
        Scrape { samples: text.lines().filter_map(parse_line).collect() }
    }

    /// The sum of every series `name` whose labels include all of `labels`; `None` when there
    /// is no such series (a metric the node does not export: top shows `-`).
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for sample in self.samples.iter().filter(|s| s.name == name) {
            if labels.iter().all(|(k, v)| sample.label(k) == Some(v)) {
                found = Some(found.unwrap_or(0.0) + sample.value);
            }
        }
        found
    }

    /// The distinct values of label `key` on series `name`, in order of appearance.
    pub(crate) fn label_values(&self, name: &str, key: &str) -> Vec<String> {
        let mut values: Vec<String> = Vec::new();
        for value in self.samples.iter().filter(|s| s.name == name).filter_map(|s| s.label(key)) {
            if !values.iter().any(|v| v == value) {
                values.push(value.to_owned());
            }
        }
        values
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `k="v",k2="v2"}` → the pairs and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_owned();
        text = text[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        text = text[end + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_values_are_read_and_junk_is_skipped() {
        let text = "# HELP x y\n# TYPE linkcast_link_connections gauge\n\
            linkcast_link_connections{shard=\"0\"} 3\n\
            linkcast_link_connections{shard=\"1\"} 4\n\
            linkcast_hub_http_requests_total{route=\"/v1/rooms/{room}\",status=\"200\"} 12 1700000000\n\
            odd{a=\"x\\\"y,z\"} 1.5e3\n\
            broken{a=\"x\" 1\n\
            plain 7\n\
            inf_one +Inf\n";
        let scrape = Scrape::parse(text);
        assert_eq!(scrape.sum("linkcast_link_connections", &[]), Some(7.0));
        assert_eq!(scrape.sum("linkcast_link_connections", &[("shard", "1")]), Some(4.0));
        assert_eq!(scrape.sum("linkcast_hub_http_requests_total", &[("route", "/v1/rooms/{room}")]), Some(12.0));
        assert_eq!(scrape.sum("odd", &[("a", "x\"y,z")]), Some(1500.0));
        assert_eq!(scrape.sum("plain", &[]), Some(7.0));
        assert_eq!(scrape.sum("inf_one", &[]), Some(f64::INFINITY));
        assert_eq!(scrape.sum("broken", &[]), None);
        assert_eq!(scrape.sum("missing", &[]), None);
        assert_eq!(scrape.label_values("linkcast_link_connections", "shard"), vec!["0", "1"]);
    }
}
