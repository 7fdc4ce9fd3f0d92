//! Fuzzy search of banned terms in a normalized password, and the choice of which matches count.
//!
//! # Search
//! A term matches a window of the password when the optimal string alignment distance between
//! them is at most 1: one substitution, insertion, deletion, or transposition of two neighbours
//! (`secruity` matches `security`). The terms sit in a trie; from every start position of the
//! password the search walks the trie along the password and, at each depth, tries the single edit
//! it is allowed, then continues exactly. Each node keeps a grandchild index ("which children have a
//! child labelled `x`"), so a substitution or deletion only visits the branches the next password
//! character can continue, and the children that end a term are listed separately. Edits of a
//! term's first character, where the trie fans out most, go through a second trie holding the
//! terms without their first character. The cost is a few dozen node visits per start position,
//! whatever the number of terms.
//!
//! # Choice
//! Windows may overlap (`chance`, `chanc`, `ychance`, ...). The counted matches are a set of
//! non-overlapping windows chosen, by dynamic programming over the positions, with these rules in
//! order:
//! 1. the first counted window is one that starts at the earliest position where any window
//!    matches (matching runs from the left; `ychance` in `mychancewithkathy`);
//! 2. the fewest windows that match only by an extra character (`chanceo`, `fsecurity`): the extra
//!    character is not part of the term, and Microsoft's examples count it on its own;
//! 3. the lowest score (the careful reading: as much of the password covered by as few terms as
//!    possible);
//! 4. the fewest edits, then the earliest windows.
//!
//! Microsoft does not publish its tie-breaks. These rules reproduce every worked example known to
//! the project: Microsoft's (`C0ntos0Blank12` scores 4, `ContoS0Bl@nkf9!` scores 5) and the four of
//! seed 004 (see the tests of `evaluate`). Rule 1 is only needed for seed 004's
//! `MyCh@nc3W!thK4thy` (11 rather than 12).

use std::collections::{BTreeMap, HashMap};

/// Symbol of a password character that appears in no banned term: it never matches an edge.
const UNKNOWN: u16 = 0;
/// "No node" / "no term".
const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;

/// One window of the password that matches a banned term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// First position (in normalized characters).
    pub(crate) start: u32,
    /// One past the last position.
    pub(crate) end: u32,
    /// 0 for an exact match, 1 for a fuzzy one.
    pub(crate) edits: u32,
    /// Whether the window is the term plus one extra character.
    pub(crate) insertion: bool,
    /// Index of the term in the index.
    pub(crate) term: u32,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Children, as a range of `Trie::edges` sorted by symbol.
    edges: (u32, u32),
    /// Grandchildren, as a range of `Trie::grand` sorted by (second symbol, first symbol).
    grand: (u32, u32),
    /// Children that end a term, as a range of `Trie::finals`.
    finals: (u32, u32),
    /// The term ending at this node (the lowest index when several do), or `NONE`.
    term: u32,
}

/// A trie over symbol strings, flattened into arrays.
#[derive(Debug, Default)]
struct Trie {
    /// Children of the root, indexed by symbol (the root has the most children).
    root_children: Vec<u32>,
    nodes: Vec<Node>,
    edges: Vec<(u16, u32)>,
    grand: Vec<(u16, u16, u32)>,
    finals: Vec<(u16, u32)>,
}

impl Trie {
    /// Builds the trie of `words` (symbol strings with the term index each stands for).
    fn build(words: &[(Vec<u16>, u32)], alphabet: usize) -> Self {
        let mut children: Vec<BTreeMap<u16, u32>> = vec![BTreeMap::new()];
        let mut term_at: Vec<u32> = vec![NONE];
        for (word, id) in words {
            let mut node = 0usize;
            for &symbol in word {
                node = match children[node].get(&symbol) {
                    Some(&n) => n as usize,
                    None => {
                        let n = children.len();
                        children.push(BTreeMap::new());
                        term_at.push(NONE);
                        children[node].insert(symbol, n as u32);
                        n
                    }
                };
            }
            if node != 0 {
                term_at[node] = term_at[node].min(*id);
            }
        }
        let mut trie = Trie { root_children: vec![NONE; alphabet.max(1)], ..Trie::default() };
        for (&symbol, &child) in &children[0] {
            trie.root_children[usize::from(symbol)] = child;
        }
        for (node, kids) in children.iter().enumerate() {
            let edge_start = trie.edges.len() as u32;
            trie.edges.extend(kids.iter().map(|(&s, &c)| (s, c)));
            let grand_start = trie.grand.len() as u32;
            let mut mine: Vec<(u16, u16, u32)> = Vec::new();
            for (&first, &child) in kids {
                for (&second, &grandchild) in &children[child as usize] {
                    mine.push((second, first, grandchild));
                }
            }
            mine.sort_unstable();
            trie.grand.extend(mine);
            let finals_start = trie.finals.len() as u32;
            trie.finals.extend(
                kids.iter().filter(|&(_, &c)| term_at[c as usize] != NONE).map(|(&s, &c)| (s, term_at[c as usize])),
            );
            trie.nodes.push(Node {
                edges: (edge_start, trie.edges.len() as u32),
                grand: (grand_start, trie.grand.len() as u32),
                finals: (finals_start, trie.finals.len() as u32),
                term: term_at[node],
            });
        }
        trie
    }

    fn child(&self, node: u32, symbol: u16) -> u32 {
        if symbol == UNKNOWN {
            return NONE;
        }
        if node == ROOT {
            return self.root_children.get(usize::from(symbol)).copied().unwrap_or(NONE);
        }
        let (a, b) = self.nodes[node as usize].edges;
        for &(s, c) in &self.edges[a as usize..b as usize] {
            if s == symbol {
                return c;
            }
            if s > symbol {
                break;
            }
        }
        NONE
    }

    /// Grandchildren of `node` reached through any child and then `second`.
    fn grand_via(&self, node: u32, second: u16) -> &[(u16, u16, u32)] {
        if second == UNKNOWN {
            return &[];
        }
        let (a, b) = self.nodes[node as usize].grand;
        let all = &self.grand[a as usize..b as usize];
        let lo = all.partition_point(|e| e.0 < second);
        let hi = lo + all[lo..].partition_point(|e| e.0 == second);
        &all[lo..hi]
    }

    fn finals_of(&self, node: u32) -> &[(u16, u32)] {
        let (a, b) = self.nodes[node as usize].finals;
        &self.finals[a as usize..b as usize]
    }

    fn term_at(&self, node: u32) -> u32 {
        self.nodes[node as usize].term
    }
}

/// The banned terms, compiled for fuzzy search.
///
/// Besides the trie of the terms, a second trie holds each term without its first character:
/// an edit of the first character (where the trie fans out most) is then an exact walk of that
/// trie, from the window's first position (deletion) or its second (substitution).
#[derive(Debug)]
pub(crate) struct TermIndex {
    /// Symbol of each ASCII character (`UNKNOWN` when no term uses it).
    ascii: [u16; 128],
    /// Symbol of each non-ASCII character used by a term.
    other: HashMap<char, u16>,
    terms: Trie,
    tails: Trie,
    term_count: usize,
}

impl TermIndex {
    /// Compiles `terms` (normalized, distinct, non-empty); term `i` is reported as index `i`.
    pub(crate) fn build(terms: &[String]) -> Self {
        let mut ascii = [UNKNOWN; 128];
        let mut other: HashMap<char, u16> = HashMap::new();
        let mut next_symbol: u16 = 1;
        let mut words: Vec<(Vec<u16>, u32)> = Vec::with_capacity(terms.len());
        for (id, term) in terms.iter().enumerate() {
            let word = term
                .chars()
                .map(|c| {
                    let slot = if c.is_ascii() { &mut ascii[c as usize] } else { other.entry(c).or_insert(UNKNOWN) };
                    if *slot == UNKNOWN {
                        *slot = next_symbol;
                        next_symbol = next_symbol.saturating_add(1);
                    }
                    *slot
                })
                .collect();
            words.push((word, id as u32));
        }
        let alphabet = usize::from(next_symbol);
        let tails: Vec<(Vec<u16>, u32)> =
            words.iter().filter(|(w, _)| w.len() > 1).map(|(w, id)| (w[1..].to_vec(), *id)).collect();
        Self {
            ascii,
            other,
            terms: Trie::build(&words, alphabet),
            tails: Trie::build(&tails, alphabet),
            term_count: terms.len(),
        }
    }

    /// Number of terms compiled in.
    pub(crate) fn len(&self) -> usize {
        self.term_count
    }

    /// Maps normalized characters to symbols, into `out` (cleared first).
    pub(crate) fn symbols_into(&self, text: &[char], out: &mut Vec<u16>) {
        out.clear();
        out.extend(text.iter().map(|&c| {
            if c.is_ascii() { self.ascii[c as usize] } else { self.other.get(&c).copied().unwrap_or(UNKNOWN) }
        }));
    }

    /// Appends every window of `text` that matches a term, at most one per (start, end): the one
    /// with the fewest edits, not an insertion if possible, then the lowest term index. Sorted by
    /// start, then end.
    pub(crate) fn find(&self, text: &[u16], out: &mut Vec<Candidate>) {
        out.clear();
        if self.term_count == 0 {
            return;
        }
        for start in 0..text.len() {
            Scan { index: self, text, start }.run(out);
        }
        out.sort_unstable_by_key(|c| (c.start, c.end, c.edits, c.insertion, c.term));
        out.dedup_by_key(|c| (c.start, c.end));
    }
}

/// The search from one start position.
struct Scan<'a> {
    index: &'a TermIndex,
    text: &'a [u16],
    start: usize,
}

impl Scan<'_> {
    fn run(&self, out: &mut Vec<Candidate>) {
        let (trie, text, n) = (&self.index.terms, self.text, self.text.len());
        // An edit of the term's first character: exact walks of the tail trie.
        self.exact_from(out, &self.index.tails, ROOT, self.start, false); // deletion
        if self.start + 1 < n {
            self.exact_from(out, &self.index.tails, ROOT, self.start + 1, false); // substitution
        }
        let mut node = ROOT;
        let mut pos = self.start;
        loop {
            // `node` spells text[start..pos] exactly.
            let term = trie.term_at(node);
            if term != NONE {
                self.emit(out, pos, 0, false, term);
                if pos < n {
                    // One extra character after the term.
                    self.emit(out, pos + 1, 1, true, term);
                }
            }
            // The one edit, at this depth.
            if pos < n {
                // Insertion: text[pos] is extra (at the root: one extra character before the term).
                self.exact_from(out, trie, node, pos + 1, true);
            }
            if node != ROOT {
                // Deletion: the term has a character c here that the text lacks.
                if pos > self.start {
                    for &(_, term) in trie.finals_of(node) {
                        self.emit(out, pos, 1, false, term);
                    }
                }
                if pos < n {
                    for &(_, _, grandchild) in trie.grand_via(node, text[pos]) {
                        self.exact_from(out, trie, grandchild, pos + 1, false);
                    }
                }
                // Substitution: text[pos] stands where the term has another character c.
                if pos < n {
                    for &(c, term) in trie.finals_of(node) {
                        if c != text[pos] {
                            self.emit(out, pos + 1, 1, false, term);
                        }
                    }
                    if pos + 1 < n {
                        for &(_, c, grandchild) in trie.grand_via(node, text[pos + 1]) {
                            if c != text[pos] {
                                self.exact_from(out, trie, grandchild, pos + 2, false);
                            }
                        }
                    }
                }
            }
            // Transposition of text[pos] and text[pos + 1].
            if pos + 1 < n && text[pos] != text[pos + 1] {
                let first = trie.child(node, text[pos + 1]);
                if first != NONE {
                    let second = trie.child(first, text[pos]);
                    if second != NONE {
                        self.exact_from(out, trie, second, pos + 2, false);
                    }
                }
            }
            // No edit here: follow the text.
            if pos == n {
                break;
            }
            let next = trie.child(node, text[pos]);
            if next == NONE {
                break;
            }
            node = next;
            pos += 1;
        }
    }

    /// Continues exactly in `trie` from `node` at `pos`, the one edit being spent.
    fn exact_from(&self, out: &mut Vec<Candidate>, trie: &Trie, mut node: u32, mut pos: usize, insertion: bool) {
        let text = self.text;
        loop {
            let term = trie.term_at(node);
            if term != NONE {
                self.emit(out, pos, 1, insertion, term);
            }
            if pos == text.len() {
                return;
            }
            node = trie.child(node, text[pos]);
            if node == NONE {
                return;
            }
            pos += 1;
        }
    }

    fn emit(&self, out: &mut Vec<Candidate>, end: usize, edits: u32, insertion: bool, term: u32) {
        if end > self.start {
            out.push(Candidate { start: self.start as u32, end: end as u32, edits, insertion, term });
        }
    }
}

/// The matches that count, and the score they leave.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// The counted windows, in text order.
    pub(crate) matches: Vec<Candidate>,
    /// One point per counted window plus one per character outside them.
    pub(crate) score: u32,
}

/// Cost of the best choice over a suffix of the text; lower is better, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Cost {
    /// Rule 2: windows that match only by an extra character.
    insertions: u32,
    /// Rule 3: the score of the suffix.
    score: u32,
    /// Rule 4: edits.
    edits: u32,
}

impl Cost {
    fn with(self, window: &Candidate) -> Cost {
        Cost {
            insertions: self.insertions + u32::from(window.insertion),
            score: self.score + 1,
            edits: self.edits + window.edits,
        }
    }
}

/// Chooses the counted matches among `candidates` (as returned by [`TermIndex::find`]) in a text
/// of `len` characters, by the rules of the module documentation.
pub(crate) fn select(candidates: &[Candidate], len: usize) -> Selection {
    let score_all = u32::try_from(len).unwrap_or(u32::MAX);
    let Some(earliest) = candidates.first().map(|c| c.start as usize) else {
        return Selection { matches: Vec::new(), score: score_all };
    };
    // best[i]: the cheapest choice among windows starting at i or later; choice[i]: the window
    // starting at i that achieves it, or NONE when leaving character i uncounted does.
    let mut best = vec![Cost::default(); len + 1];
    let mut choice = vec![NONE; len + 1];
    let mut next = candidates.len();
    for i in (earliest..len).rev() {
        let first = candidates[..next].partition_point(|c| (c.start as usize) < i);
        best[i] = Cost { score: best[i + 1].score + 1, ..best[i + 1] };
        for (k, window) in candidates.iter().enumerate().take(next).skip(first) {
            let cost = best[window.end as usize].with(window);
            // On a tie, take the window: the earlier match.
            if cost < best[i] || (cost == best[i] && choice[i] == NONE) {
                best[i] = cost;
                choice[i] = k as u32;
            }
        }
        next = first;
    }
    // Rule 1: the first counted window starts at `earliest`.
    let mut first: Option<(usize, Cost)> = None;
    for (k, window) in candidates.iter().enumerate().take_while(|(_, c)| c.start as usize == earliest) {
        let cost = best[window.end as usize].with(window);
        if first.is_none_or(|(_, c)| cost < c) {
            first = Some((k, cost));
        }
    }
    let Some((k, cost)) = first else {
        return Selection { matches: Vec::new(), score: score_all };
    };
    let mut matches = vec![candidates[k]];
    let mut i = candidates[k].end as usize;
    while i < len {
        match choice[i] {
            NONE => i += 1,
            c => {
                let window = candidates[c as usize];
                matches.push(window);
                i = window.end as usize;
            }
        }
    }
    let before = u32::try_from(earliest).unwrap_or(u32::MAX);
    Selection { matches, score: cost.score.saturating_add(before) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(terms: &[&str]) -> TermIndex {
        TermIndex::build(&terms.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
    }

    fn windows(index: &TermIndex, text: &str) -> Vec<(String, u32)> {
        let chars: Vec<char> = text.chars().collect();
        let mut symbols = Vec::new();
        index.symbols_into(&chars, &mut symbols);
        let mut found = Vec::new();
        index.find(&symbols, &mut found);
        found.iter().map(|c| (chars[c.start as usize..c.end as usize].iter().collect(), c.edits)).collect()
    }

    /// Optimal string alignment distance, the slow textbook way, as the reference.
    fn osa(a: &[char], b: &[char]) -> usize {
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }

    #[test]
    fn finds_each_kind_of_single_edit() {
        let idx = index(&["abcdef"]);
        for (text, edits) in [
            ("abcdef", 0),
            ("abcdeg", 1),  // substitution of the last character
            ("xbcdef", 1),  // substitution of the first
            ("abcxef", 1),  // substitution inside
            ("abcdefg", 1), // insertion at the end (Microsoft's example)
            ("abcde", 1),   // deletion at the end (Microsoft's example)
            ("bcdef", 1),   // deletion at the start
            ("abdef", 1),   // deletion inside
            ("abcxdef", 1), // insertion inside
            ("bacdef", 1),  // transposition at the start
            ("abcdfe", 1),  // transposition at the end
        ] {
            let found = windows(&idx, text);
            assert!(found.contains(&(text.to_owned(), edits)), "{text}: {found:?}");
        }
        for text in ["abxdxf", "bcdfe", "badcfe", "abc"] {
            let found = windows(&idx, text);
            assert!(!found.iter().any(|(w, _)| w == text), "{text}: {found:?}");
        }
    }

    #[test]
    fn agrees_with_the_reference_distance_on_every_window() {
        let terms = ["chance", "security", "abcd", "aabb", "password", "qwerty", "abab"];
        let idx = index(&terms);
        let term_chars: Vec<Vec<char>> = terms.iter().map(|t| t.chars().collect()).collect();
        let texts = [
            "mychancewithkathy",
            "securitysecruityli",
            "aabbabab",
            "abdcbadcabcdd",
            "passwrodqwertyqwrety",
            "xxabcdyy",
            "baab",
        ];
        for text in texts {
            let chars: Vec<char> = text.chars().collect();
            let found = windows(&idx, text);
            for start in 0..chars.len() {
                for end in start + 1..=chars.len() {
                    let window = &chars[start..end];
                    let best = term_chars.iter().map(|t| osa(window, t)).min().unwrap_or(usize::MAX);
                    let w: String = window.iter().collect();
                    if best <= 1 {
                        assert!(
                            found.iter().any(|(f, e)| *f == w && *e as usize == best),
                            "{text}: window {w} should have {best} edits: {found:?}"
                        );
                    }
                }
            }
            for (w, edits) in &found {
                let window: Vec<char> = w.chars().collect();
                let best = term_chars.iter().map(|t| osa(&window, t)).min().unwrap_or(usize::MAX);
                assert_eq!(best, *edits as usize, "{text}: {w}");
            }
        }
    }

    #[test]
    fn unknown_characters_never_match_but_can_be_substituted() {
        let idx = index(&["abcd"]);
        assert!(windows(&idx, "ab€d").contains(&("ab€d".to_owned(), 1)));
        assert!(windows(&idx, "€€€€").is_empty());
        assert!(windows(&index(&[]), "abcd").is_empty());
    }

    fn chosen(terms: &[&str], text: &str) -> (Vec<String>, u32) {
        let idx = index(terms);
        let chars: Vec<char> = text.chars().collect();
        let mut symbols = Vec::new();
        idx.symbols_into(&chars, &mut symbols);
        let mut found = Vec::new();
        idx.find(&symbols, &mut found);
        let selection = select(&found, chars.len());
        let words =
            selection.matches.iter().map(|c| chars[c.start as usize..c.end as usize].iter().collect()).collect();
        (words, selection.score)
    }

    #[test]
    fn choice_follows_the_documented_rules() {
        // Microsoft's documented example: exact matches; "blankf" is within one edit but the f
        // counts on its own (rule 2).
        assert_eq!(chosen(&["contoso", "blank"], "contosoblankf9i"), (vec!["contoso".into(), "blank".into()], 5));
        // Rule 1: the earliest first match, even by an extra character.
        assert_eq!(chosen(&["chance", "security"], "mychancewithkathy"), (vec!["ychance".into()], 11));
        // Rule 2 after the first match: no "chanceo" nor "fsecurity".
        assert_eq!(chosen(&["chance", "security"], "chanceofsecurity").0, ["chance", "security"]);
        assert_eq!(chosen(&["chance", "security"], "securitysecruityli").0, ["security", "secruity"]);
        // Rule 3: one long term rather than two short ones.
        assert_eq!(
            chosen(&["pass", "word", "password"], "passwordpassword"),
            (vec!["password".into(), "password".into()], 2)
        );
        // Rule 3: cover the most with the fewest terms.
        assert_eq!(chosen(&["abcd", "cdef"], "abcdef"), (vec!["abc".into(), "def".into()], 2));
        assert_eq!(chosen(&["abcd"], "xyz"), (Vec::<String>::new(), 3));
        assert_eq!(chosen(&["abcd"], ""), (Vec::<String>::new(), 0));
    }
}
