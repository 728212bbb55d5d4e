from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="message",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("complete", "Complete"),
                    ("stopped", "Stopped"),
                    ("failed", "Failed"),
                    ("degraded", "Degraded"),
                ],
                default="complete",
                max_length=10,
            ),
        ),
    ]
