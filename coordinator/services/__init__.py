"""The admin service's business logic: the only code that writes the admin database.

Each state change runs in one transaction (`Database.write()`) and appends its audit event
(`audit.append_event`) in that same transaction, so the audit chain and the state it
describes can never disagree. Authorization is checked here too, not only in the routes:
a tenant admin gets `NotFoundError` for another tenant's rows, exactly as for ids that do
not exist, and an auditor gets `ForbiddenError` for any write.
"""
