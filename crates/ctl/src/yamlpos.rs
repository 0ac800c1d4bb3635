//! Line numbers of YAML fields: `spec.http[0].route[0].destination.host` →
//! line 14, so that analyzer messages point at the line that is wrong.
//!
//! Each document is parsed a second time into a tree whose keys and values
//! carry their [`serde_saphyr::Spanned`] locations; nothing else here
//! interprets YAML.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML value with the location of every key and item.
#[derive(Debug, Clone)]
enum Tree {
    Scalar(String),
    Null,
    Seq(Vec<Spanned<Self>>),
    Map(Vec<(Spanned<Self>, Spanned<Self>)>),
}

impl Tree {
    fn scalar(&self) -> Option<&str> {
        match self {
            Self::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.value.scalar() == Some(key))
                .map(|(_, v)| &v.value),
            _ => None,
        }
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree::Scalar(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::Scalar(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tree, E> {
        Ok(Tree::Scalar(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tree, E> {
        Ok(Tree::Scalar(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Scalar(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::Scalar(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Tree, E> {
        Ok(Tree::Scalar(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Tree>>()? {
            items.push(item);
        }
        Ok(Tree::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Spanned<Tree>, Spanned<Tree>>()? {
            entries.push(entry);
        }
        Ok(Tree::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

/// Field path → 1-based line, for one document (or one `List` item).
#[derive(Debug, Clone, Default)]
pub(crate) struct LineIndex {
    pub(crate) lines: BTreeMap<String, usize>,
    /// Line where the object starts.
    pub(crate) start: usize,
}

impl LineIndex {
    /// The line of `path`, or of its nearest ancestor that has one, or the
    /// object's first line.
    pub(crate) fn line(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }
}

fn walk(tree: &Tree, prefix: &str, offset: usize, out: &mut BTreeMap<String, usize>) {
    match tree {
        Tree::Map(entries) => {
            for (k, v) in entries {
                let Some(key) = k.value.scalar() else {
                    continue;
                };
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                out.entry(path.clone())
                    .or_insert(k.referenced.line() as usize + offset);
                walk(&v.value, &path, offset, out);
            }
        }
        Tree::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{prefix}[{i}]");
                out.insert(path.clone(), item.referenced.line() as usize + offset);
                walk(&item.value, &path, offset, out);
            }
        }
        Tree::Scalar(_) | Tree::Null => {}
    }
}

/// Line indexes of the objects of one document that starts at `first_line`
/// of its file: one per object, or one per item of a `kind: List`. Each
/// entry is keyed by `(kind, namespace-or-empty, name)`.
pub(crate) fn index_document(
    text: &str,
    first_line: usize,
) -> Vec<((String, String, String), LineIndex)> {
    let parsed = std::panic::catch_unwind(|| serde_saphyr::from_str::<Spanned<Tree>>(text));
    let Ok(Ok(root)) = parsed else {
        return Vec::new();
    };
    let offset = first_line.saturating_sub(1);
    let mut all = BTreeMap::new();
    walk(&root.value, "", offset, &mut all);
    let ident = |t: &Tree| {
        let kind = t.get("kind").and_then(Tree::scalar).unwrap_or_default();
        let meta = t.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Tree::scalar)
            .unwrap_or_default();
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Tree::scalar)
            .unwrap_or_default();
        (kind.to_string(), ns.to_string(), name.to_string())
    };
    let start_of = |lines: &BTreeMap<String, usize>| {
        lines
            .values()
            .min()
            .copied()
            .unwrap_or(root.referenced.line() as usize + offset)
    };
    if root.value.get("kind").and_then(Tree::scalar) == Some("List")
        && let Some(Tree::Seq(items)) = root.value.get("items")
    {
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let prefix = format!("items[{i}].");
                let lines: BTreeMap<String, usize> = all
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|s| (s.to_string(), *v)))
                    .collect();
                let start = item.referenced.line() as usize + offset;
                (ident(&item.value), LineIndex { lines, start })
            })
            .collect();
    }
    let start = start_of(&all);
    vec![(ident(&root.value), LineIndex { lines: all, start })]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lines() {
        let doc = "apiVersion: v1\nkind: VirtualService\nmetadata:\n  name: r\nspec:\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v4\n";
        let idx = index_document(doc, 10);
        assert_eq!(idx.len(), 1);
        let (id, lines) = &idx[0];
        assert_eq!(id.2, "r");
        assert_eq!(lines.start, 10);
        assert_eq!(lines.line("spec.http[0].route[0].destination.subset"), 19);
        assert_eq!(lines.line("spec.http[0].route[0].destination.port"), 17);
        assert_eq!(lines.line("nothing.here"), 10);
    }
}
