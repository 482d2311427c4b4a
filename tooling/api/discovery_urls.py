from django.urls import path

from tooling.api import discovery_views as views

# Fixed segments (search, categories) before the <name:tool_name> catch-all, which also matches them.
_routes = [
    ("<app_id:app_id>/tools/search", views.ToolSearchView, "tool-search"),
    ("<app_id:app_id>/tools/categories", views.ToolCategoriesView, "tool-categories"),
    ("<app_id:app_id>/tools/categories/<name:category>", views.ToolCategoryView, "tool-category"),
    ("<app_id:app_id>/tools/<name:tool_name>/execute", views.ToolExecuteView, "tool-execute"),
    ("<app_id:app_id>/tools/<name:tool_name>", views.ToolDetailView, "tool-detail"),
    ("<app_id:app_id>/index", views.ToolIndexView, "tool-index"),
]

urlpatterns = []
for route, view, name in _routes:
    urlpatterns.append(path(route, view.as_view(), name=name))
    urlpatterns.append(path(route + "/", view.as_view()))
