"""Recipes: YAML files checked key by key against typed settings."""

from distill.config.load import LoadedRecipe, bundled_recipes, from_dict, load_recipe, locate, save_recipe, to_yaml
from distill.config.schema import Recipe

__all__ = ["LoadedRecipe", "Recipe", "bundled_recipes", "from_dict", "load_recipe", "locate", "save_recipe", "to_yaml"]
