"""Subscribers to the reactor's signals: notifiers, metrics and the backup job."""
