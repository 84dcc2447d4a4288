"""The AdMRL family (Lin et al. 2020): adversarial task search with implicit hypergradients."""
