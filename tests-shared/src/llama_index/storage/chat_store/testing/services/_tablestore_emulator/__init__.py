"""A Tablestore emulator speaking the SDK's wire protocol (loaded lazily; needs ``tablestore``).

Nothing here is imported at plugin load time: the ``tablestore`` SDK is an optional extra of
the testing package, and only :mod:`.._tablestore` imports these modules when a test asks for
the emulator.
"""
