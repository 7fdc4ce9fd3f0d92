//! The status pages' HTML: what the page shows ([`View`]) and how, every value escaped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use pwrelay_shared::domain::DomainName;

use super::super::ApiState;
use super::super::health::AgentView;
use super::super::submit::covers;
use crate::jobs::Timestamp;
use crate::store::gauges::{DomainQueue, FailureCount, StateCount};
use crate::store::{AgentState, ApiClient, StoreError};

/// A certificate expiring within this is highlighted.
const CERTIFICATE_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// `text` safe in HTML text and in quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole document around `body` (already HTML); `refresh` adds the 15 s refresh.
fn document(title: &str, body: &str, refresh: bool) -> String {
    let refresh = if refresh { "\n<meta http-equiv=\"refresh\" content=\"15\">" } else { "" };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n<title>{} · pwrelay</title>\n\
         <link rel=\"stylesheet\" href=\"/status/assets/status.css\">\n</head>\n<body>\n{body}\n</body>\n</html>\n",
        escape(title)
    )
}

/// A page with a title and one sentence (both plain text).
pub(super) fn message(title: &str, text: &str) -> String {
    document(
        title,
        &format!("<main class=\"narrow\">\n<h1>{}</h1>\n<p>{}</p>\n</main>", escape(title), escape(text)),
        false,
    )
}

/// The body of a redirect, for clients that do not follow it.
pub(super) fn redirect(location: &str) -> String {
    let location = escape(location);
    document("Redirecting", &format!("<p><a href=\"{location}\">Continue to {location}</a></p>"), false)
}

/// The login form, with an optional notice (plain text; never the submitted input).
pub(super) fn login(notice: Option<&str>) -> String {
    let notice = notice.map(|n| format!("<p class=\"notice\" id=\"notice\">{}</p>\n", escape(n))).unwrap_or_default();
    let body = format!(
        "<main class=\"narrow\">\n<h1>pwrelay status</h1>\n{notice}\
         <form method=\"post\" action=\"/status/login\">\n\
         <label for=\"token\">API token of a client with the <code>status</code> scope</label>\n\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required>\n\
         <button type=\"submit\" id=\"login\">Log in</button>\n</form>\n</main>"
    );
    document("Log in", &body, false)
}

/// What the status page shows to one client.
pub(super) struct View {
    client: String,
    now: Timestamp,
    /// The served domains the client covers, each with its queue.
    domains: Vec<(DomainName, Option<DomainQueue>)>,
    agents: Vec<AgentView>,
    /// Domains a connected agent serves.
    served: BTreeSet<String>,
    failures: Vec<FailureCount>,
    /// For a client not limited to domains: the webhook deliveries and new hires by state.
    backlog: Option<(Vec<StateCount>, Vec<StateCount>)>,
}

impl View {
    /// Reads what `client` may see from the store; failures since `window` ago.
    pub(super) async fn read(state: &ApiState, client: &ApiClient, window: Duration) -> Result<Self, StoreError> {
        let now = Timestamp::now();
        let known = state.registry.agents().await?;
        let thresholds = state.registry.thresholds();
        let mut served = BTreeSet::new();
        let agents = known
            .into_iter()
            .filter_map(|agent| {
                let agent_state = agent.state(&thresholds, now);
                if agent_state == AgentState::Connected {
                    served.extend(agent.domains.iter().map(ToString::to_string));
                }
                AgentView::visible_to(agent, agent_state, client)
            })
            .collect();
        let gauges = state.store.gauges().await?;
        let mut queues: BTreeMap<String, DomainQueue> =
            gauges.queue.into_iter().map(|q| (q.domain.clone(), q)).collect();
        let domains = state
            .domains
            .iter()
            .filter(|d| covers(client, d))
            .map(|d| (d.clone(), queues.remove(d.as_str())))
            .collect();
        let since = Timestamp(now.0.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX)));
        let failures = state
            .store
            .failures_since(since)
            .await?
            .into_iter()
            .filter(|f| DomainName::parse(&f.domain).is_ok_and(|d| covers(client, &d)))
            .collect();
        let backlog = client.scopes.domains.is_none().then_some((gauges.webhooks, gauges.new_hires));
        Ok(Self { client: client.name.clone(), now, domains, agents, served, failures, backlog })
    }

    /// The page.
    pub(super) fn render(&self) -> String {
        let mut body = String::new();
        let _ = write!(
            body,
            "<header>\n<h1>pwrelay status</h1>\n<p>Signed in as <strong id=\"client\">{}</strong> · {} UTC · \
             refreshes every 15 s</p>\n<form method=\"post\" action=\"/status/logout\"><button type=\"submit\" \
             id=\"logout\">Log out</button></form>\n</header>\n<main>\n",
            escape(&self.client),
            escape(&clock(self.now)),
        );
        if self.domains.is_empty() {
            body.push_str("<p class=\"notice\">This client's scopes cover none of the relay's domains.</p>\n");
        }
        for (domain, queue) in &self.domains {
            self.domain_section(&mut body, domain, queue.as_ref());
        }
        self.failures_section(&mut body);
        if let Some((webhooks, new_hires)) = &self.backlog {
            self.counts_section(&mut body, "webhooks", "Webhook deliveries", webhooks);
            self.counts_section(&mut body, "new-hires", "New hires by stage", new_hires);
        }
        body.push_str("</main>");
        document("Status", &body, true)
    }

    fn domain_section(&self, body: &mut String, domain: &DomainName, queue: Option<&DomainQueue>) {
        let name = domain.as_str();
        let id = format!("domain-{}", slug(name));
        let _ = write!(body, "<section class=\"domain\" id=\"{}\">\n<h2>{}</h2>\n", escape(&id), escape(name));
        let (queued, dispatched) = queue.map_or((0, 0), |q| (q.queued, q.dispatched));
        let oldest = queue.and_then(|q| q.oldest_queued).map_or_else(|| "none".to_owned(), |t| age(self.now, t));
        let _ = writeln!(
            body,
            "<p class=\"queue\">Queued: <strong>{queued}</strong> · with an agent: <strong>{dispatched}</strong> · \
             oldest queued: <strong>{}</strong></p>",
            escape(&oldest)
        );
        if !self.served.contains(name) {
            body.push_str("<p class=\"alert no-agent\">no agent connected: its jobs wait until one connects</p>\n");
        }
        let agents: Vec<&AgentView> = self.agents.iter().filter(|a| a.domains.iter().any(|d| d == name)).collect();
        if agents.is_empty() {
            body.push_str("<p>No agent has ever served this domain.</p>\n</section>\n");
            return;
        }
        body.push_str(
            "<table class=\"agents\">\n<thead><tr><th>Agent</th><th>State</th><th>Version</th><th>Last seen</th>\
             <th>DC health</th><th>Certificate expires</th></tr></thead>\n<tbody>\n",
        );
        for agent in agents {
            let state = agent.state.as_str();
            let expires = agent.certificate.expires;
            let expiring = expires.0.saturating_sub(self.now.0)
                < i64::try_from(CERTIFICATE_WARNING.as_millis()).unwrap_or(i64::MAX);
            let _ = writeln!(
                body,
                "<tr class=\"agent\"><td class=\"name\">{}</td><td class=\"state {state}\">{state}</td><td>{}</td>\
                 <td title=\"{}\">{}</td><td class=\"dcs\">{}</td><td class=\"cert{}\">{} ({})</td></tr>",
                escape(&agent.name),
                escape(&agent.version),
                escape(&agent.last_seen.to_rfc3339()),
                escape(&age(self.now, agent.last_seen)),
                dc_health(agent, name),
                if expiring { " expiring" } else { "" },
                escape(&day(expires)),
                escape(&until(self.now, expires)),
            );
        }
        body.push_str("</tbody>\n</table>\n</section>\n");
    }

    fn failures_section(&self, body: &mut String) {
        body.push_str("<section id=\"failures\">\n<h2>Failures in the last 24 hours</h2>\n");
        if self.failures.is_empty() {
            body.push_str("<p>None.</p>\n</section>\n");
            return;
        }
        body.push_str("<table>\n<thead><tr><th>Domain</th><th>Error code</th><th>Jobs</th></tr></thead>\n<tbody>\n");
        for f in &self.failures {
            let _ = writeln!(
                body,
                "<tr class=\"failure\"><td>{}</td><td class=\"code\">{}</td><td class=\"count\">{}</td></tr>",
                escape(&f.domain),
                escape(&f.error_code),
                f.count
            );
        }
        body.push_str("</tbody>\n</table>\n</section>\n");
    }

    fn counts_section(&self, body: &mut String, id: &str, title: &str, counts: &[StateCount]) {
        let _ = write!(body, "<section id=\"{id}\">\n<h2>{}</h2>\n", escape(title));
        if counts.is_empty() {
            body.push_str("<p>None.</p>\n</section>\n");
            return;
        }
        body.push_str("<table>\n<thead><tr><th>State</th><th>Count</th><th>Oldest</th></tr></thead>\n<tbody>\n");
        for c in counts {
            let oldest = c.oldest.map_or_else(|| "-".to_owned(), |t| age(self.now, t));
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td class=\"count\">{}</td><td>{}</td></tr>",
                escape(&c.state),
                c.count,
                escape(&oldest)
            );
        }
        body.push_str("</tbody>\n</table>\n</section>\n");
    }
}

/// An agent's DC health for `domain`: each DC with its bind result, or the domain's summary.
fn dc_health(agent: &AgentView, domain: &str) -> String {
    let Some(health) = agent.directories.iter().find(|h| h.domain.as_str() == domain) else {
        return "<span class=\"unknown\">not reported yet</span>".to_owned();
    };
    let mark = |ok: bool| if ok { ("ok", "bind ok") } else { ("failing", "bind failing") };
    if health.dcs.is_empty() {
        let (class, text) = mark(health.bind_ok);
        return format!("<span class=\"dc {class}\">{text}</span> {}", escape(&health.detail));
    }
    let mut out = String::from("<ul>");
    for dc in &health.dcs {
        let (class, text) = mark(dc.bind_ok);
        let latency = dc.latency_ms.map(|ms| format!(", {ms} ms")).unwrap_or_default();
        let detail = if dc.detail.is_empty() { String::new() } else { format!(": {}", escape(&dc.detail)) };
        let _ = write!(
            out,
            "<li class=\"dc {class}\"><span class=\"dc-name\">{}</span> {text}{latency}{detail}</li>",
            escape(&dc.name)
        );
    }
    out.push_str("</ul>");
    out
}

/// A domain as an element id (letters, digits and dashes).
fn slug(domain: &str) -> String {
    domain.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// `YYYY-MM-DD HH:MM:SS` of a time, UTC.
fn clock(t: Timestamp) -> String {
    let text = t.to_rfc3339();
    text.get(..19).map_or(text.clone(), |s| s.replace('T', " "))
}

/// `YYYY-MM-DD` of a time, UTC.
fn day(t: Timestamp) -> String {
    let text = t.to_rfc3339();
    text.get(..10).map_or(text.clone(), str::to_owned)
}

fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// How long ago `t` was.
fn age(now: Timestamp, t: Timestamp) -> String {
    format!("{} ago", span(now.0.saturating_sub(t.0)))
}

/// How long until `t` (or that it has passed).
fn until(now: Timestamp, t: Timestamp) -> String {
    if t.0 <= now.0 { "expired".to_owned() } else { format!("in {}", span(t.0 - now.0)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        let page = login(Some("<b>"));
        assert!(page.contains("&lt;b&gt;") && !page.contains("<b>"));
    }

    #[test]
    fn spans_read_in_their_unit() {
        assert_eq!(span(59_999), "59 s");
        assert_eq!(span(120_000), "2 min");
        assert_eq!(span(7_200_000), "2 h");
        assert_eq!(span(3 * 86_400_000), "3 d");
        assert_eq!(until(Timestamp(10), Timestamp(5)), "expired");
    }
}
