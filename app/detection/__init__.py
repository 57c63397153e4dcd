"""Detection as a service: windows scored as points arrive, alarms kept as events, verdicts.

- marks.py: ingestion notes which time range of a series changed (cheap, in its transaction);
- detector.py: the loop that claims such a series, scores its new or changed windows with the
  active model and stores them (window_scores);
- alarms.py: flagged windows merged into alarms, their lifecycle, verdicts and reads;
- events.py: alarm events for notifications, recorded in the same transaction.
"""
