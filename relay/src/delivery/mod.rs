//! Messages to people: the SMS gateway, e-mail through Graph `sendMail`, and the templates both
//! fill in. A message that carries a link is a secret while it exists (`SecretString`): it is
//! never logged, and only its channel and recipient appear in the request's delivery record.

pub mod sms;
pub mod templates;
