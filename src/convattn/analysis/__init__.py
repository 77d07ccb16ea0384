"""Measuring tools: multiply-adds (`flops`), model tables (`summary`), the DWNet property table
(`properties`), the operator benchmark (`bench`), attention pictures (`viz`), sequence metrics
(`metrics`) and head-centre measures (`centres`)."""
