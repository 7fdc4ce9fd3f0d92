//! Active Directory password policy: the model and the complexity rules.
