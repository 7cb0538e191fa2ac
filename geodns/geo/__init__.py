"""Where users are and where to send them: the GeoIP database, sites, dynamic records and their decisions."""
