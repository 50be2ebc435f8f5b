app_name = "evalsets"

urlpatterns: list = []
