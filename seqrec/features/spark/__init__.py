"""The spark-redis profile's feature pipeline: events exported to Parquet, sequence features
and labels in Spark SQL, read point in time by Feast's spark offline store.

session.py: the Spark session (pyspark and Java checked first); lake.py: the events table as
Parquet, appended by ingestion watermark; features.py: the sequence features (the same
semantics as :mod:`seqrec.features.sql`); training.py: leave-one-out positions and
classification labels (those of :mod:`seqrec.training.labels`).
"""
