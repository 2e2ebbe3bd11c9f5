"""The report side: reads results.json / samples.jsonl of finished runs into tables, paired and gap
figures, frontiers and plots. It never imports the run side's machinery."""
