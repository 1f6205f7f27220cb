"""An example FedFleet plug-in. Importing the package imports nothing: the phones import only `models`
(torch), the server imports `datasets` as well."""
