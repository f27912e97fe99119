//! What the commands print: aligned tables and `key: value` blocks for people, one JSON
//! document per command for scripts.

use std::io::Write;

/// Where a command's answer goes.
pub(crate) struct Output {
    json: bool,
    out: std::io::StdoutLock<'static>,
}

impl Output {
    /// Standard output, as JSON when `json` is set.
    pub(crate) fn stdout(json: bool) -> Self {
        Self {
            json,
            out: std::io::stdout().lock(),
        }
    }

    /// Whether the command should print JSON.
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `value` as one pretty JSON document.
    pub(crate) fn json(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        serde_json::to_writer_pretty(&mut self.out, value)?;
        writeln!(self.out)?;
        Ok(())
    }

    /// Prints one line.
    pub(crate) fn line(&mut self, text: impl std::fmt::Display) -> anyhow::Result<()> {
        writeln!(self.out, "{text}")?;
        Ok(())
    }

    /// Prints `pairs` as `key: value` lines with the values aligned.
    pub(crate) fn fields(&mut self, pairs: &[(&str, String)]) -> anyhow::Result<()> {
        let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in pairs {
            writeln!(self.out, "{key:<width$}  {value}", width = width + 1)?;
        }
        Ok(())
    }

    /// Prints a table: a header line, then one line per row, each column as wide as its
    /// widest cell, no borders (multi-line cells are shown on one line). Laid out by
    /// `comfy-table`, which measures cells by their display width.
    pub(crate) fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
        use comfy_table::{ContentArrangement, Table, TableComponent, presets};
        let mut table = Table::new();
        table
            .load_preset(presets::NOTHING)
            .remove_style(TableComponent::LeftBorder)
            .remove_style(TableComponent::RightBorder)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.iter().copied());
        for row in rows {
            table.add_row(row.iter().map(|c| c.replace('\n', " ")));
        }
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        for line in table.lines() {
            writeln!(self.out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// An epoch-millisecond time for people: UTC, to the millisecond.
pub(crate) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
    )
}

/// How long `ms` milliseconds are, for people: its two largest units (`3d 4h`, `12m 5s`,
/// `850ms`).
pub(crate) fn age(ms: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ];
    let ms = ms.max(0);
    let Some(first) = UNITS.iter().position(|(_, size)| ms >= *size) else {
        return format!("{ms}ms");
    };
    let (unit, size) = UNITS[first];
    let mut text = format!("{}{unit}", ms / size);
    if let Some((next, next_size)) = UNITS.get(first + 1) {
        let rest = (ms % size) / next_size;
        if rest > 0 {
            text.push_str(&format!(" {rest}{next}"));
        }
    }
    text
}

/// An optional time for people (`-` when unset).
pub(crate) fn opt_time(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), time)
}

/// An optional value for people (`-` when unset).
pub(crate) fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `text` cut to at most `max` characters, marked with `…` when cut.
pub(crate) fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
