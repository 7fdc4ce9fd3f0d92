//! New hires through the lifecycle callout (initial passwords).

use std::sync::Arc;

use crate::deployment::Deployment;
use crate::params::Params;
use crate::workload::{AccountRun, Shared};

/// The new-hire flow's fakes and accounts.
#[derive(Debug)]
pub(crate) struct NewHires;

impl NewHires {
    pub(crate) async fn prepare(_deployment: &Deployment, _params: &Params) -> Self {
        Self
    }

    pub(crate) async fn run(self, _shared: Arc<Shared>) -> Vec<AccountRun> {
        Vec::new()
    }
}
