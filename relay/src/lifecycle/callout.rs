//! The Lifecycle Workflows custom task extension callout, as the Logic App forwards it:
//!
//! ```json
//! {"data": {"callbackUriPath": "...",
//!           "subject": {"id", "displayName", "email", "userPrincipalName", "manager": {"id", "displayName", "email"}},
//!           "task": {"id", "displayName"}, "taskProcessingResult": {"id", "createdDateTime"},
//!           "workflow": {"id", "displayName", "workflowVersion"}},
//!  "source": "...", "type": "..."}
//! ```
//!
//! Unknown fields are ignored (Microsoft adds `@odata.type` and may add more); the ids the relay
//! builds Graph URLs from must be GUIDs.

use serde::Deserialize;
use uuid::Uuid;

/// What the relay keeps of a callout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    /// `taskProcessingResult.id`: the idempotency key and the resume target.
    pub task_processing_result_id: Uuid,
    /// `workflow.id`.
    pub workflow_id: Uuid,
    /// `task.id`.
    pub task_id: Uuid,
    /// `subject.id`: the Entra user object id.
    pub subject_id: Uuid,
    /// `subject.displayName`, for messages.
    pub display_name: String,
    /// `workflow.displayName`, for the audit trail.
    pub workflow_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    data: Data,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    subject: Subject,
    task: Named,
    task_processing_result: Named,
    workflow: Named,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subject {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Named {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
}

impl Callout {
    /// Parses and checks a callout body; the error says which field is wrong.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let body: Body = serde_json::from_slice(body).map_err(|e| {
            format!(
                "the body is not a Lifecycle Workflows callout ({}); forward the custom task extension's body unchanged",
                crate::untrusted::describe_json_error(&e).message
            )
        })?;
        let guid =
            |field: &str, value: &str| Uuid::parse_str(value).map_err(|_| format!("data.{field} must be a GUID"));
        let d = body.data;
        Ok(Self {
            task_processing_result_id: guid("taskProcessingResult.id", &d.task_processing_result.id)?,
            workflow_id: guid("workflow.id", &d.workflow.id)?,
            task_id: guid("task.id", &d.task.id)?,
            subject_id: guid("subject.id", &d.subject.id)?,
            display_name: d.subject.display_name.unwrap_or_default().chars().take(256).collect(),
            workflow_name: d.workflow.display_name.unwrap_or_default().chars().take(256).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented shape, with the `@odata.type` fields real callouts carry.
    pub(crate) const SAMPLE: &str = r#"{
      "data": {
        "@odata.type": "microsoft.graph.identityGovernance.onboardingCalloutData",
        "callbackUriPath": "/identityGovernance/lifecycleWorkflows/workflows('14879e66-9ea9-48d0-804d-8fea672d0341')/tasks('4806a56b-3e8f-4c4a-8ad5-1e2b3c7d8e9f')/processingResults('c7ef6aa2-7a0e-4b9a-9b5e-1f2e3d4c5b6a')/microsoft.graph.identityGovernance.resume",
        "subject": {"id": "8d3c6a0e-4c85-4a0d-9d2b-2f9a1e0c7b11", "displayName": "Jane Doe",
                    "email": "jane.doe@contoso.com", "userPrincipalName": "jane.doe@contoso.com",
                    "manager": {"id": "0f7c2b8e-1d2e-4f5a-8b9c-0d1e2f3a4b5c", "displayName": "Max", "email": "max@contoso.com"}},
        "task": {"id": "4806a56b-3e8f-4c4a-8ad5-1e2b3c7d8e9f", "displayName": "Initial password"},
        "taskProcessingResult": {"id": "c7ef6aa2-7a0e-4b9a-9b5e-1f2e3d4c5b6a", "createdDateTime": "2026-11-22T08:00:00Z"},
        "workflow": {"id": "14879e66-9ea9-48d0-804d-8fea672d0341", "displayName": "Onboard new hires", "workflowVersion": 1}
      },
      "source": "sample",
      "type": "lifecycleEvent"
    }"#;

    #[test]
    fn the_documented_callout_parses() {
        let c = Callout::parse(SAMPLE.as_bytes()).expect("valid");
        assert_eq!(c.task_processing_result_id.to_string(), "c7ef6aa2-7a0e-4b9a-9b5e-1f2e3d4c5b6a");
        assert_eq!(c.subject_id.to_string(), "8d3c6a0e-4c85-4a0d-9d2b-2f9a1e0c7b11");
        assert_eq!(c.display_name, "Jane Doe");
    }

    #[test]
    fn wrong_ids_and_shapes_name_the_field() {
        let bad = SAMPLE.replace("\"id\": \"c7ef6aa2-7a0e-4b9a-9b5e-1f2e3d4c5b6a\"", "\"id\": \"../../x\"");
        let e = Callout::parse(bad.as_bytes()).expect_err("not a guid");
        assert!(e.contains("taskProcessingResult.id"), "{e}");
        let e = Callout::parse(b"{\"data\": {}}").expect_err("missing");
        assert!(e.contains("subject"), "{e}");
        assert!(Callout::parse(b"\xff").is_err());
    }
}
