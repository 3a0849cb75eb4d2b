"""The product catalogue in Delta Lake.

* :mod:`.sources` -- where candidate rows come from (Fashion-MNIST IDX files, a folder + CSV);
* :mod:`.tables` -- table locations, schemas, creation and versioned reads;
* :mod:`.ingest` -- validation, rejects and the idempotent MERGE into ``products``.
"""

from lookalike.catalogue.ingest import (  # noqa: F401
                                        IngestSummary,
                                        ingest_fashion_mnist,
                                        ingest_folder,
)
from lookalike.catalogue.tables import (  # noqa: F401
                                        CatalogueTable,
                                        catalogue_table,
                                        delta_version,
                                        read_products,
)
