"""Detection as a service: alarms, and notifications of them (webhooks)."""
