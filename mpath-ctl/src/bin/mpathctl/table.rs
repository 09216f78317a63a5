//! Column output for people: named columns, `-o` to pick and order them.

use anyhow::bail;

/// A field `-o` names that the view does not have: a usage error (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("unknown field {field:?}; fields are: {fields}")]
pub(crate) struct UnknownField {
    field: String,
    fields: String,
}

/// A view as named columns of text cells.
pub(crate) struct Table {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Renders the table, keeping only `fields` (comma-separated column names, any case) in
    /// that order when given.
    pub(crate) fn render(&self, fields: Option<&str>) -> anyhow::Result<String> {
        self.render_padded(fields, &[])
    }

    /// [`Table::render`] with each column at least as wide as `minimum` says (by column
    /// index), so that rows rendered one at a time (a stream) line up.
    pub(crate) fn render_padded(
        &self,
        fields: Option<&str>,
        minimum: &[usize],
    ) -> anyhow::Result<String> {
        let picked = self.pick(fields)?;
        let widths: Vec<usize> = picked
            .iter()
            .map(|&c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.columns[c].len(), minimum.get(c).copied().unwrap_or(0)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let mut line = |cells: Vec<&str>| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    l.push_str(&format!("{cell:<w$}  "));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(picked.iter().map(|&c| self.columns[c]).collect());
        for row in &self.rows {
            line(picked.iter().map(|&c| row[c].as_str()).collect());
        }
        Ok(out)
    }

    /// Renders `fields` of every row as ipmpstat -P does: no header, cells joined by colons,
    /// with `\` and `:` inside a cell escaped by a backslash (IPv6 addresses have colons).
    pub(crate) fn render_parsable(&self, fields: &str) -> anyhow::Result<String> {
        let picked = self.pick(Some(fields))?;
        let escape = |cell: &str| cell.replace('\\', "\\\\").replace(':', "\\:");
        Ok(self
            .rows
            .iter()
            .map(|row| {
                let cells: Vec<String> = picked.iter().map(|&c| escape(&row[c])).collect();
                cells.join(":") + "\n"
            })
            .collect())
    }

    /// The indexes of `fields` (comma-separated column names, any case), or of every column.
    fn pick(&self, fields: Option<&str>) -> anyhow::Result<Vec<usize>> {
        let picked: Vec<usize> = match fields {
            None => (0..self.columns.len()).collect(),
            Some(list) => list
                .split(',')
                .map(|f| {
                    let f = f.trim();
                    self.columns
                        .iter()
                        .position(|c| c.eq_ignore_ascii_case(f))
                        .ok_or_else(|| {
                            anyhow::Error::new(UnknownField {
                                field: f.to_string(),
                                fields: self.columns.join(","),
                            })
                        })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        if picked.is_empty() {
            bail!("no fields selected");
        }
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            columns: &["INTERFACE", "STATE"],
            rows: vec![
                vec!["h0".into(), "ok".into()],
                vec!["h10".into(), "failed".into()],
            ],
        }
    }

    #[test]
    fn aligns_columns() {
        assert_eq!(
            table().render(None).unwrap(),
            "INTERFACE  STATE\nh0         ok\nh10        failed\n"
        );
    }

    #[test]
    fn padded_columns_line_up_across_separately_rendered_rows() {
        let row = |interface: &str| Table {
            columns: &["INTERFACE", "STATE"],
            rows: vec![vec![interface.into(), "ok".into()]],
        };
        let a = row("h0").render_padded(None, &[12]).unwrap();
        let b = row("a-long-name0").render_padded(None, &[12]).unwrap();
        assert_eq!(a.lines().nth(1), Some("h0            ok"));
        assert_eq!(b.lines().nth(1), Some("a-long-name0  ok"));
    }

    #[test]
    fn parsable_output_has_no_header_and_escapes_colons() {
        let table = Table {
            columns: &["ADDRESS", "INBOUND"],
            rows: vec![
                vec!["2001:db8::19/64".into(), "h0".into()],
                vec!["a\\b".into(), "--".into()],
            ],
        };
        assert_eq!(
            table.render_parsable("inbound,address").unwrap(),
            "h0:2001\\:db8\\:\\:19/64\n--:a\\\\b\n"
        );
    }

    #[test]
    fn picks_and_orders_fields_case_insensitively() {
        assert_eq!(
            table().render(Some("state,interface")).unwrap(),
            "STATE   INTERFACE\nok      h0\nfailed  h10\n"
        );
        let err = table().render(Some("state,bogus")).unwrap_err().to_string();
        assert_eq!(err, "unknown field \"bogus\"; fields are: INTERFACE,STATE");
    }
}
