"""fsl-sage-flwr: FSL-SAGE federated split learning (Nair et al., ICML 2025) for Flower."""
